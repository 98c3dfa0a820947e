import sys

from sdviz.flowchart.cli import main

sys.exit(main(sys.argv[1:]))
