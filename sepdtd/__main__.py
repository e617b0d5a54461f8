from sepdtd.cli import main

raise SystemExit(main())
