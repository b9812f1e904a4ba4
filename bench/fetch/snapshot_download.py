"""huggingface_hub's snapshot_download on the bench repo (HF_ENDPOINT and HF_HOME come from the
environment); prints the seconds it took."""
import sys
import time

from huggingface_hub import snapshot_download

repo_id, workers = sys.argv[1], int(sys.argv[2])
t = time.perf_counter()
snapshot_download(repo_id, max_workers=workers)
print(f"{time.perf_counter() - t:.3f}")
