from sdviz.flowchart import main

raise SystemExit(main())
