import sys
from pathlib import Path

# billgen.py is a test helper module next to the tests.
sys.path.insert(0, str(Path(__file__).parent))
