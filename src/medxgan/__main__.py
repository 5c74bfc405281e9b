from medxgan.cli import main

raise SystemExit(main())
