import sys

from sdviz.flowchart import main

sys.exit(main(sys.argv[1:]))
