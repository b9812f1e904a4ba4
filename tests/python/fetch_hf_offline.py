"""Cross-check for os-fetch: with HF_HUB_OFFLINE=1 and the cache os-fetch filled, huggingface_hub's
own snapshot_download / hf_hub_download must find every file. Prints {path: sha256} as JSON.

usage: fetch_hf_offline.py REPO_ID REPO_TYPE REVISION ONE_FILE
"""
import hashlib
import json
import os
import sys

from huggingface_hub import hf_hub_download, snapshot_download

repo_id, repo_type, revision, one_file = sys.argv[1:5]
root = snapshot_download(repo_id, repo_type=repo_type, revision=revision, local_files_only=True)
single = hf_hub_download(repo_id, one_file, repo_type=repo_type, revision=revision, local_files_only=True)
assert os.path.realpath(single) == os.path.realpath(os.path.join(root, one_file)), (single, root)
out = {}
for dirpath, _, names in os.walk(root):
    for name in names:
        full = os.path.join(dirpath, name)
        with open(full, "rb") as f:
            out[os.path.relpath(full, root)] = hashlib.sha256(f.read()).hexdigest()
print(json.dumps({"root": root, "files": out}))
