from vr3ai.cli import main

raise SystemExit(main())
