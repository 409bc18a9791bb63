from agent.ops.cli import main

raise SystemExit(main())
