from kloop_rag.eval.run import main

raise SystemExit(main())
