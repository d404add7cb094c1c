import sys

from impls.weights.build import main

sys.exit(main())
