from stylepipe.cli import main

raise SystemExit(main())
