import sys
from pathlib import Path

# the helpers module sits next to the tests
sys.path.insert(0, str(Path(__file__).parent))
