from wit.cli import main

raise SystemExit(main())
