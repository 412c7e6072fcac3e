#!/usr/bin/env python3
"""Hugging Face cache / `datasets` fixtures for dpo-rs' `--model org/name`, `--data org/name` and
`--data <save_to_disk dir>` tests, written by the real libraries (huggingface_hub 2.4, datasets 5.2,
transformers 5.23 in the oracle venv), without network.

How the Hub cache is written
----------------------------
The script starts a tiny in-process HTTP server that mimics the Hub endpoints huggingface_hub uses
(`GET /api/{models,datasets}/<repo>/revision/<rev>`, `GET /api/.../tree/<rev>[/<path>]?recursive=..`,
`HEAD/GET /[datasets/]<repo>/resolve/<rev>/<path>`), sets HF_ENDPOINT to it, and then downloads with
huggingface_hub's own `snapshot_download` / `hf_hub_download` and transformers' `from_pretrained`. So
every byte of the cache layout (blobs/, refs/, snapshots/<commit>/ relative symlinks, trees/<commit>.json,
.no_exist/, .locks/, CACHEDIR.TAG) is produced by huggingface_hub's code, as a real download would.
The mock serves files like the Hub does:
  * regular (git) files: 200, `ETag: "<git blob sha1>"`, `X-Repo-Commit`, Content-Length;
  * LFS files (matching the Hub's default .gitattributes patterns: *.safetensors, *.parquet, ...; or
    > 10 MB; the repos carry no .gitattributes file, see LFS_PATTERNS):
    302 to another host (`localhost` instead of `127.0.0.1`, like the Hub's CDN redirect) with
    `X-Linked-Etag: "<sha256>"`, `X-Linked-Size`; so blobs are named sha256 for LFS files and git-sha1
    for regular ones, exactly as on the Hub;
  * missing file: 404 + `X-Error-Code: EntryNotFound` + `X-Repo-Commit` (=> huggingface_hub writes
    `.no_exist/<commit>/<path>`); unknown revision: 404 RevisionNotFound; unknown repo: 401 RepoNotFound.
Commit hashes are NOT real git commit ids (there is no git repo): sha1 of a canonical text listing the
parent commit, the message and every (path, git blob sha1); deterministic, 40 lowercase hex.
No xet (HF_HUB_DISABLE_XET=1): plain HTTP downloads, as huggingface_hub does without hf_xet.

Order of downloads (so the cache looks like a user's after some real use):
  1. snapshot_download(tiny-llama, revision=<older commit hash>)  -> snapshot of the older commit, no ref
  2. hf_hub_download(tiny-llama, config.json, revision="v0.1")     -> refs/v0.1 (a tag -> older commit)
  3. AutoTokenizer / AutoModelForCausalLM.from_pretrained(tiny-llama) -> refs/main, part of the main
     snapshot, and `.no_exist/<main>/...` for the files transformers probes that the repo lacks
  4. snapshot_download(tiny-llama)                                   -> the rest of main (README.md)
  5. snapshot_download(tiny-pairs, repo_type="dataset")
then verified offline: scan_cache_dir, hf_hub_download/snapshot_download(local_files_only=True) for
every file and revision, from_pretrained(local_files_only=True) equal to the saved model, and
`datasets.load_dataset(<snapshot dir>, <config>)` reading the README's configs.

Outputs (under crates/dpo-cli/tests/fixtures/ unless --out-dir):
  hf_cache/                  HF_HUB_CACHE with models--dpo-rs--tiny-llama and datasets--dpo-rs--tiny-pairs
  saved_dataset/             DatasetDict({"train": 16, "test": 8}).save_to_disk (standard string pairs)
  saved_dataset_single/      Dataset.save_to_disk (no splits; the 8 test pairs)
  saved_dataset_conversational/  Dataset.save_to_disk of the 16 conversational train rows
  hf_fixtures.json           manifest (commits, refs, files, blobs, splits, first rows, Arrow schemas,
                             tiny-model log-probs of the first train pair)
Repos:
  dpo-rs/tiny-llama (model): random LlamaForCausalLM (hidden 32, 2 layers, 4 heads, 2 kv heads,
    intermediate 64, vocab = the tokenizer's, initializer_range 0.1 so that outputs depend visibly on
    the weights, torch.manual_seed(0), float32, untied lm_head) + a byte-level BPE tokenizer trained
    with `tokenizers` on the synthetic text below (specials <|endoftext|>=0 <|im_start|>=1 <|im_end|>=2,
    eos <|im_end|>, pad <|endoftext|>, no bos, SmolLM2's ChatML chat_template inside
    tokenizer_config.json). Two commits: "older" (tag v0.1) and main, which changes README.md and
    generation_config.json (adds max_new_tokens=32); the other blobs are shared.
  dpo-rs/tiny-pairs (dataset): configs "default" (data/train-00000-of-00001.parquet 16 rows,
    data/test-00000-of-00001.parquet 8 rows; prompt/chosen/rejected strings) and "conversational"
    (conversational/train-00000-of-00001.parquet, 16 rows; prompt = list of {content, role},
    chosen/rejected = [one assistant message]); Parquet and README.md written the way
    `DatasetDict.push_to_hub` does (`Dataset.to_parquet` per shard, datasets' `_get_updated_dataset_card`).
All text is synthetic (made up here), no real data.

Log-probs in the manifest: the first train pair, NO chat template, tokenizer(..., add_special_tokens=False):
  prompt_ids = tok(prompt).input_ids; full_ids = tok(prompt + completion).input_ids;
  completion_ids = full_ids[len(prompt_ids):] (asserted: full_ids starts with prompt_ids, and
  completion_ids == tok(completion).input_ids); no EOS appended; logits = model(full_ids[None]).logits
  (float32, CPU, eager attention); logprob = sum over completion positions t of
  log_softmax(logits[t-1])[full_ids[t]].

--real (hand demonstration, nothing committed): /tmp/hfcache_real with HuggingFaceTB/SmolLM2-135M-Instruct
(the files of /tmp/oracle/smollm2-135m-instruct-f32) and dataset dpo-rs/hh-helpful-pairs (first 64
HH-RLHF helpful-base test records converted like ../shared/tools/oracle/hh_to_pairs.py, as
data/test-00000-of-00001.parquet), /tmp/saved_hh (DatasetDict({"train": same 64}).save_to_disk) and
/tmp/hf_real_manifest.json.

Usage (oracle python; deterministic, re-runnable: outputs are deleted and rewritten):
  OMP_NUM_THREADS=1 /tmp/oracle/venv/bin/python scripts/oracle/make_hf_fixtures.py [--real] [--skip-tiny]
"""
import argparse
import fnmatch
import gzip
import hashlib
import http.server
import json
import os
import shutil
import socketserver
import sys
import tempfile
import threading
import urllib.parse

# --- environment: must be set before huggingface_hub / transformers / datasets are imported ----------
for _k, _v in {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "RAYON_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_XET": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "DATASETS_VERBOSITY": "error",
}.items():
    os.environ[_k] = _v
for _k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_TOKEN", "HF_HUB_CACHE"):
    os.environ.pop(_k, None)
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"  # the mock Hub is local
_SCRATCH = tempfile.mkdtemp(prefix="make_hf_fixtures.")
os.environ["HF_HOME"] = os.path.join(_SCRATCH, "hf_home")  # keep ~/.cache untouched
os.environ["HF_DATASETS_CACHE"] = os.path.join(_SCRATCH, "datasets_cache")

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_OUT = os.path.join(REPO_ROOT, "crates", "dpo-cli", "tests", "fixtures")
FIXED_DATE = "2025-01-01T00:00:00.000Z"
HUB = None  # the MockHub, started in main()

GITATTRIBUTES = """\
*.7z filter=lfs diff=lfs merge=lfs -text
*.arrow filter=lfs diff=lfs merge=lfs -text
*.bin filter=lfs diff=lfs merge=lfs -text
*.ckpt filter=lfs diff=lfs merge=lfs -text
*.gguf filter=lfs diff=lfs merge=lfs -text
*.gz filter=lfs diff=lfs merge=lfs -text
*.h5 filter=lfs diff=lfs merge=lfs -text
*.onnx filter=lfs diff=lfs merge=lfs -text
*.parquet filter=lfs diff=lfs merge=lfs -text
*.pt filter=lfs diff=lfs merge=lfs -text
*.pth filter=lfs diff=lfs merge=lfs -text
*.safetensors filter=lfs diff=lfs merge=lfs -text
*.tar filter=lfs diff=lfs merge=lfs -text
*.zip filter=lfs diff=lfs merge=lfs -text
*.zst filter=lfs diff=lfs merge=lfs -text
"""
# Which files the mock serves as LFS: the Hub's default .gitattributes patterns. The repos themselves carry no
# .gitattributes file: in the cache it would be a symlink named .gitattributes, which `git fsck` flags
# (gitattributesSymlink) in the committed fixture.
LFS_PATTERNS = [l.split()[0] for l in GITATTRIBUTES.splitlines() if l.strip()]
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024

# SmolLM2-135M-Instruct's ChatML template (as in /tmp/oracle/smollm2-135m-instruct-f32/chat_template.jinja).
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# ------------------------------------------------------------------------------------------------
# Synthetic preference pairs (made up for these fixtures).
# (question, chosen answer, rejected answer)
PAIRS = [
    ("How often should I water a cactus?",
     "Water it about once every two weeks in summer and once a month in winter, letting the soil dry out between waterings.",
     "Every day, cactus plants love a lot of water."),
    ("What is a good way to start learning to cook?",
     "Start with a few simple recipes like eggs, rice and soup, and cook them several times until they feel easy.",
     "Just buy frozen food."),
    ("How can I make my bread rise better?",
     "Use fresh yeast, keep the dough in a warm place, and give it enough time to double in size before baking.",
     "Bread does not need to rise."),
    ("Why is the sky blue?",
     "Sunlight is scattered by the air, and blue light is scattered much more than red light, so the sky looks blue.",
     "Because the ocean paints it."),
    ("How do I keep my cat from scratching the sofa?",
     "Give the cat a tall scratching post near the sofa, reward it for using the post, and cover the sofa corners for a while.",
     "Cats never scratch sofas, so you can ignore it."),
    ("What should I pack for a day hike?",
     "Bring water, a snack, a map, sun cream, a light jacket and a small first aid kit.",
     "Nothing, hiking is easy."),
    ("How can I sleep better at night?",
     "Go to bed at the same time each night, keep the room dark and cool, and avoid screens for an hour before sleep.",
     "Drink three cups of coffee before bed."),
    ("What is the difference between weather and climate?",
     "Weather is what the air is doing today, while climate is the usual pattern of weather over many years.",
     "They are the same word."),
    ("How do I make a simple crème brûlée?",
     "Whisk cream, egg yolks, sugar and vanilla, bake the cups gently in a water bath, chill them, then burn a thin layer of sugar on top.",
     "Mix milk and salt and serve it hot."),
    ("How can I save money on groceries?",
     "Plan meals for the week, write a list, buy staples in bulk, and compare the price per kilo on the shelf labels.",
     "Buy whatever looks nice."),
    ("Why do leaves change color in autumn?",
     "As days get shorter the trees stop making green chlorophyll, so the yellow and red colors in the leaves start to show.",
     "Leaves are painted by squirrels."),
    ("How do I fix a squeaky door?",
     "Lift the pin out of the hinge, rub a little oil or soap on it, put it back and open the door a few times.",
     "Slam the door harder until it stops."),
    ("What is a healthy breakfast?",
     "Oats with fruit and nuts, or eggs with whole grain toast, give you protein and fiber to start the day.",
     "A large bag of candy."),
    ("How do I learn to ride a bike as an adult?",
     "Lower the seat so your feet touch the ground, practice gliding on a gentle slope, then add pedaling once you can balance.",
     "Adults cannot learn to ride bikes."),
    ("How can I remember new words in a foreign language?",
     "Review them with spaced repetition, use each word in a sentence, and say them out loud a few times a day.",
     "Read the dictionary once → done."),
    ("What makes a good password?",
     "Use a long phrase of several random words, do not reuse it on other sites, and keep it in a password manager.",
     "Your name followed by 123."),
    # --- test split ---
    ("How do I clean a cast iron pan?",
     "Rinse it with hot water, scrub off food with a brush, dry it on the stove and rub in a thin layer of oil.",
     "Leave it to soak in soapy water overnight."),
    ("Why do we have seasons?",
     "The earth is tilted, so during the year each half of the planet leans toward or away from the sun.",
     "The sun turns itself up and down."),
    ("How can I be more productive when working from home?",
     "Keep regular hours, set up a quiet place to work, and plan the three most important tasks each morning.",
     "Work from bed all day."),
    ("What should I do if my phone gets wet?",
     "Turn it off right away, dry the outside, remove the case and let it dry for a day before turning it on.",
     "Put it in the microwave to dry it."),
    ("How do plants make food?",
     "Plants use sunlight, water and carbon dioxide to make sugar in their leaves, a process called photosynthesis.",
     "Plants eat the dirt."),
    ("How do I start running?",
     "Begin with short runs mixed with walking three times a week, and slowly add a few minutes each week.",
     "Run a marathon on the first day."),
    ("How can I make tea taste better?",
     "Use fresh water just off the boil, steep the tea for three to five minutes, and try a slice of lemon or a little honey.",
     "Boil the tea bag for an hour."),
    ("What is a good first pet for a child?",
     "A small fish or a pair of guinea pigs can be a good start, with an adult helping with feeding and cleaning.",
     "A tiger."),
]
N_TRAIN, N_TEST = 16, 8
assert len(PAIRS) == N_TRAIN + N_TEST
EXTRA_CORPUS = """\
The quick brown fox jumps over the lazy dog. A small model reads short sentences and learns which words
come next. People ask questions and an assistant gives a helpful answer. Some answers are good and some
answers are bad. The good answer is clear, kind and correct. The bad answer is short, rude or wrong.
We train a tiny tokenizer on this text so that common words become single tokens. Numbers like 1, 2, 3,
10 and 2025 appear too. The weather is nice today, so we walk to the park and drink some tea.
"""


def standard_row(q, c, r):
    return {"prompt": f"Question: {q}\nAnswer:", "chosen": " " + c, "rejected": " " + r}


def conversational_row(i, q, c, r):
    # TRL conversational preference format; struct field order {content, role} as in trl-lib datasets.
    msg = lambda role, content: {"content": content, "role": role}
    prompt = [msg("user", q)]
    if i % 5 == 1:
        prompt = [msg("system", "You are a friendly and careful assistant."), msg("user", q)]
    elif i % 5 == 2:
        prompt = [msg("user", "Hi! I have a question."), msg("assistant", "Sure, what would you like to know?"),
                  msg("user", q)]
    return {"prompt": prompt, "chosen": [msg("assistant", c)], "rejected": [msg("assistant", r)]}


# ------------------------------------------------------------------------------------------------
# Hashing helpers.
def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def file_digests(path):
    h256, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h256.update(chunk)
            size += len(chunk)
    hg = hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            hg.update(chunk)
    return size, hg.hexdigest(), h256.hexdigest()


def lfs_pointer(sha256, size):
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


class RepoFileEntry:
    def __init__(self, rel, src):
        self.rel, self.src = rel, src
        self.size, self.git_sha1, self.sha256 = file_digests(src)
        self.lfs = any(fnmatch.fnmatch(os.path.basename(rel), p) for p in LFS_PATTERNS) or self.size > LFS_SIZE_THRESHOLD
        ptr = lfs_pointer(self.sha256, self.size)
        # On the Hub, an LFS file's git blob is its pointer file; the cache names its blob by sha256.
        self.oid = git_blob_sha1(ptr) if self.lfs else self.git_sha1
        self.pointer_size = len(ptr)
        self.etag = self.sha256 if self.lfs else self.git_sha1  # blob file name in the cache

    def manifest(self):
        d = {"path": self.rel, "size": self.size, "lfs": self.lfs, "blob": self.etag, "git_blob_sha1": self.oid}
        if self.lfs:
            d["sha256"] = self.sha256
        return d


class MockRepo:
    def __init__(self, repo_type, repo_id):
        self.repo_type, self.repo_id = repo_type, repo_id
        self.commits = {}  # sha -> {rel: RepoFileEntry}
        self.order = []  # commit shas, oldest first
        self.refs = {}  # branch/tag -> sha

    def add_commit(self, folder, message, refs=("main",)):
        files = {}
        for root, _, names in os.walk(folder):
            for n in sorted(names):
                p = os.path.join(root, n)
                rel = os.path.relpath(p, folder).replace(os.sep, "/")
                files[rel] = RepoFileEntry(rel, p)
        parent = self.order[-1] if self.order else ""
        canon = f"repo {self.repo_type}s/{self.repo_id}\nparent {parent}\nmessage {message}\n" + "".join(
            f"{rel} {files[rel].oid}\n" for rel in sorted(files))
        sha = hashlib.sha1(canon.encode()).hexdigest()
        self.commits[sha] = files
        self.order.append(sha)
        for r in refs:
            self.refs[r] = sha
        return sha

    def resolve(self, rev):
        if rev in self.commits:
            return rev
        return self.refs.get(rev)


class MockHub:
    """Minimal Hub: enough of the HTTP API for hf_hub_download, snapshot_download, from_pretrained."""

    def __init__(self):
        self.repos = {}
        self.log = []
        self.blobs = {}  # sha256 -> src path (for the CDN host)
        handler = self._make_handler()
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.cdn = f"http://localhost:{self.port}"  # another host: huggingface_hub does not follow the 302
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add_repo(self, repo):
        self.repos[(repo.repo_type, repo.repo_id)] = repo
        for files in repo.commits.values():
            for e in files.values():
                if e.lfs:
                    self.blobs[e.sha256] = e.src

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def _make_handler(self):
        hub = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, code, headers=None, body=b"", src=None, length=None):
                self.send_response(code)
                headers = dict(headers or {})
                if length is None:
                    length = len(body) if src is None else os.path.getsize(src)
                headers.setdefault("Content-Length", str(length))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command == "HEAD":
                    return
                if src is not None:
                    with open(src, "rb") as f:
                        shutil.copyfileobj(f, self.wfile, 1 << 20)
                else:
                    self.wfile.write(body)

            def _json(self, obj, code=200, headers=None):
                h = {"Content-Type": "application/json; charset=utf-8"}
                h.update(headers or {})
                self._send(code, h, json.dumps(obj).encode())

            def _err(self, code, error_code, msg, extra=None):
                h = {"X-Error-Code": error_code, "X-Error-Message": msg}
                h.update(extra or {})
                self._json({"error": msg}, code, h)

            def do_HEAD(self):
                self._route()

            def do_GET(self):
                self._route()

            def do_POST(self):
                self._route()

            def _repo(self, rtype, org, name):
                return hub.repos.get((rtype, f"{org}/{name}"))

            def _route(self):
                url = urllib.parse.urlsplit(self.path)
                parts = url.path.split("/")[1:]
                q = urllib.parse.parse_qs(url.query)
                try:
                    self._dispatch(parts, q)
                finally:
                    hub.log.append((self.command, url.path, url.query))

            def _dispatch(self, parts, q):
                if len(parts) == 2 and parts[0] == "cdn-lfs":  # the "CDN"
                    src = hub.blobs.get(parts[1])
                    if src is None:
                        return self._send(404)
                    return self._serve_bytes(src, {"ETag": f'"{parts[1]}"'})
                if parts and parts[0] == "api" and len(parts) >= 4 and parts[1] in ("models", "datasets"):
                    rtype = parts[1][:-1]
                    repo = self._repo(rtype, parts[2], parts[3])
                    if repo is None:
                        return self._err(401, "RepoNotFound", "Repository not found")
                    if len(parts) == 4:  # model_info / dataset_info without a revision: main
                        return self._json(self._info(repo, repo.refs["main"]))
                    if len(parts) < 6:
                        return self._err(404, "EntryNotFound", "unsupported endpoint")
                    kind, rev = parts[4], urllib.parse.unquote(parts[5])
                    sha = repo.resolve(rev)
                    if sha is None:
                        return self._err(404, "RevisionNotFound", f"Invalid rev id: {rev}")
                    if kind == "revision":
                        return self._json(self._info(repo, sha))
                    if kind == "tree":
                        sub = urllib.parse.unquote("/".join(parts[6:])).strip("/")
                        recursive = q.get("recursive", ["false"])[0].lower() == "true"
                        entries = self._tree(repo, sha, sub, recursive)
                        if entries is None:
                            return self._err(404, "EntryNotFound", f"{sub} does not exist on {rev}",
                                             {"X-Repo-Commit": sha})
                        return self._json(entries)
                    return self._err(404, "EntryNotFound", "unsupported endpoint")
                # resolve
                rtype = "model"
                if parts and parts[0] == "datasets":
                    rtype, parts = "dataset", parts[1:]
                if len(parts) >= 5 and parts[2] == "resolve":
                    repo = self._repo(rtype, parts[0], parts[1])
                    if repo is None:
                        return self._err(401, "RepoNotFound", "Repository not found")
                    rev = urllib.parse.unquote(parts[3])
                    sha = repo.resolve(rev)
                    if sha is None:
                        return self._err(404, "RevisionNotFound", f"Invalid rev id: {rev}")
                    rel = urllib.parse.unquote("/".join(parts[4:]))
                    e = repo.commits[sha].get(rel)
                    if e is None:
                        return self._err(404, "EntryNotFound", f"{rel} does not exist on {rev}",
                                         {"X-Repo-Commit": sha})
                    if e.lfs:
                        return self._send(302, {
                            "Location": f"{hub.cdn}/cdn-lfs/{e.sha256}",
                            "ETag": f'"{e.oid}"',
                            "X-Linked-Etag": f'"{e.sha256}"',
                            "X-Linked-Size": str(e.size),
                            "X-Repo-Commit": sha,
                        })
                    return self._serve_bytes(e.src, {"ETag": f'"{e.git_sha1}"', "X-Repo-Commit": sha})
                return self._send(404)

            def _serve_bytes(self, src, headers):
                size = os.path.getsize(src)
                rng = self.headers.get("Range")
                headers = dict(headers)
                headers["Accept-Ranges"] = "bytes"
                headers["Content-Type"] = "application/octet-stream"
                if rng and rng.startswith("bytes=") and self.command == "GET":
                    start = int(rng[6:].split("-")[0] or 0)
                    headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
                    self.send_response(206)
                    headers["Content-Length"] = str(size - start)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    with open(src, "rb") as f:
                        f.seek(start)
                        shutil.copyfileobj(f, self.wfile, 1 << 20)
                    return
                self._send(200, headers, src=src)

            def _info(self, repo, sha):
                org = repo.repo_id.split("/")[0]
                d = {
                    "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
                    "id": repo.repo_id, "author": org, "sha": sha, "private": False, "disabled": False,
                    "gated": False, "downloads": 0, "likes": 0, "tags": [],
                    "lastModified": FIXED_DATE, "createdAt": FIXED_DATE,
                    "siblings": [{"rfilename": p} for p in sorted(repo.commits[sha])],
                }
                if repo.repo_type == "model":
                    d["modelId"] = repo.repo_id
                    d["library_name"] = "transformers"
                return d

            def _tree(self, repo, sha, sub, recursive):
                files = repo.commits[sha]
                prefix = sub + "/" if sub else ""
                dirs, out = set(), []
                for rel in sorted(files):
                    if not rel.startswith(prefix):
                        continue
                    rest = rel[len(prefix):]
                    segs = rest.split("/")
                    for k in range(1, len(segs)):
                        if not recursive and k > 1:
                            break
                        dirs.add(prefix + "/".join(segs[:k]))
                    if not recursive and len(segs) > 1:
                        continue
                    e = files[rel]
                    ent = {"type": "file", "oid": e.oid, "size": e.size, "path": rel}
                    if e.lfs:
                        ent["lfs"] = {"oid": e.sha256, "size": e.size, "pointerSize": e.pointer_size}
                    out.append(ent)
                if sub and not out and not dirs:
                    return None
                tree = [{"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d}
                        for d in sorted(dirs)]
                return tree + out

        return H


# ------------------------------------------------------------------------------------------------
def write_text(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [EXTRA_CORPUS]
    for q, c, r in PAIRS:
        corpus += [q, c, r]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, min_frequency=2, show_progress=False,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        unk_token=None, additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        chat_template=CHAT_TEMPLATE, model_max_length=2048, clean_up_tokenization_spaces=False)
    return hf_tok


def build_model(vocab_size):
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6,
        initializer_range=0.1, tie_word_embeddings=False, bos_token_id=None, eos_token_id=2, pad_token_id=0)
    cfg.dtype = torch.float32
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.float32).eval()
    model.generation_config = GenerationConfig(bos_token_id=None, eos_token_id=2, pad_token_id=0)
    return model


MODEL_README_V1 = """---
library_name: transformers
license: apache-2.0
tags:
- dpo-rs
- test-fixture
---

# tiny-llama

A tiny random LlamaForCausalLM (hidden 32, 2 layers) with a byte-level BPE tokenizer trained on synthetic
text. Test fixture for dpo-rs; its outputs are meaningless.
"""
MODEL_README_V2 = MODEL_README_V1 + """
## Changelog

- main: generation_config.json sets max_new_tokens=32.
- v0.1: first version.
"""


def push_style_parquet(repo_dir, dsdict, config_name):
    """What DatasetDict.push_to_hub(config_name=...) writes, minus the upload: one Parquet shard per split
    (`Dataset.to_parquet`, push_to_hub's writer_batch_size) and README.md via datasets' own
    `_get_updated_dataset_card` run on the local repo folder."""
    from datasets import config as dcfg
    from datasets.arrow_dataset import _get_updated_dataset_card
    from datasets.splits import SplitInfo
    from fsspec.implementations.dirfs import DirFileSystem
    from fsspec.implementations.local import LocalFileSystem

    data_dir = config_name if config_name != "default" else "data"
    splits_info, uploaded_sizes, features = [], [], None
    for split, ds in dsdict.items():
        path = os.path.join(repo_dir, data_dir, f"{split}-00000-of-00001.parquet")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        ds.to_parquet(path, batch_size=1000)
        uploaded_sizes.append(os.path.getsize(path))
        splits_info.append(SplitInfo(name=split, num_bytes=ds._estimate_nbytes(), num_examples=len(ds)))
        features = ds.features
    fs = DirFileSystem(path=repo_dir, fs=LocalFileSystem())
    card, legacy = _get_updated_dataset_card(
        fs=fs, config_name=config_name, splits_info=splits_info, features=features, data_dir=data_dir,
        set_default=None, uploaded_sizes=uploaded_sizes, deleted_sizes=[], remove_other_splits=True)
    assert legacy is None
    with open(os.path.join(repo_dir, dcfg.REPOCARD_FILENAME), "wb") as f:
        f.write(str(card).encode())


def arrow_schema_of(path):
    import pyarrow as pa
    with open(path, "rb") as f:
        magic = f.read(8)
    with pa.memory_map(path) as src:
        try:
            reader = pa.ipc.open_stream(src)
            fmt = "stream"
        except pa.ArrowInvalid:
            reader = pa.ipc.open_file(src)
            fmt = "file"
        table = reader.read_all()
    return fmt, magic, table


def describe_dir(root):
    """Sorted listing of a directory: files with sizes, symlinks with their (relative) targets."""
    out = []
    for dp, dns, fns in os.walk(root):
        dns.sort()
        for n in sorted(fns) + sorted(d for d in dns if os.path.islink(os.path.join(dp, d))):
            p = os.path.join(dp, n)
            rel = os.path.relpath(p, root).replace(os.sep, "/")
            if os.path.islink(p):
                out.append({"path": rel, "symlink": os.readlink(p)})
            else:
                out.append({"path": rel, "size": os.path.getsize(p)})
        for d in sorted(dns):
            p = os.path.join(dp, d)
            if not os.path.islink(p) and not os.listdir(p):
                out.append({"path": os.path.relpath(p, root) + "/", "empty_dir": True})
    return sorted(out, key=lambda d: d["path"])


def dir_size(root):
    return sum(os.lstat(os.path.join(dp, n)).st_size for dp, _, fns in os.walk(root) for n in fns)


def completion_logprob(model, tok, prompt, completion):
    import torch
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    full = tok(prompt + completion, add_special_tokens=False)["input_ids"]
    assert full[: len(p_ids)] == p_ids, "prompt tokens are not a prefix of prompt+completion tokens"
    c_ids = full[len(p_ids):]
    assert c_ids == tok(completion, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([full])).logits[0].float()
    lp = torch.log_softmax(logits, dim=-1)
    per_tok = [lp[t - 1, full[t]].item() for t in range(len(p_ids), len(full))]
    return {"prompt_ids": p_ids, "completion_ids": c_ids, "per_token_logprobs": per_tok,
            "sum_logprob": float(sum(torch.tensor(per_tok, dtype=torch.float64)).item())}


# ------------------------------------------------------------------------------------------------
def make_tiny(out_dir):
    import datasets
    import huggingface_hub as hh
    import torch
    import transformers
    from huggingface_hub import hf_hub_download, scan_cache_dir, snapshot_download
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    hub = HUB
    assert hh.constants.ENDPOINT == hub.endpoint, (hh.constants.ENDPOINT, hub.endpoint)
    stage = os.path.join(_SCRATCH, "stage")
    model_id, data_id = "dpo-rs/tiny-llama", "dpo-rs/tiny-pairs"

    # --- model repo, two commits --------------------------------------------------------------------
    tok = build_tokenizer()
    model = build_model(len(tok))
    v1 = os.path.join(stage, "tiny-llama-v1")
    model.save_pretrained(v1)
    tok.save_pretrained(v1, save_jinja_files=False)
    write_text(os.path.join(v1, "README.md"), MODEL_README_V1)
    v2 = os.path.join(stage, "tiny-llama-v2")
    shutil.copytree(v1, v2)
    model.generation_config.max_new_tokens = 32
    model.generation_config.save_pretrained(v2)
    write_text(os.path.join(v2, "README.md"), MODEL_README_V2)
    mrepo = MockRepo("model", model_id)
    old = mrepo.add_commit(v1, "Upload tiny-llama", refs=("main", "v0.1"))
    new = mrepo.add_commit(v2, "Set max_new_tokens in generation_config", refs=("main",))
    assert mrepo.refs == {"main": new, "v0.1": old}
    hub.add_repo(mrepo)

    # --- dataset repo ---------------------------------------------------------------------------------
    std = [standard_row(*p) for p in PAIRS]
    conv = [conversational_row(i, *p) for i, p in enumerate(PAIRS[:N_TRAIN])]
    ds_train = datasets.Dataset.from_list(std[:N_TRAIN])
    ds_test = datasets.Dataset.from_list(std[N_TRAIN:])
    ds_conv = datasets.Dataset.from_list(conv)
    drepo_dir = os.path.join(stage, "tiny-pairs")
    os.makedirs(drepo_dir)
    push_style_parquet(drepo_dir, {"train": ds_train, "test": ds_test}, "default")
    push_style_parquet(drepo_dir, {"train": ds_conv}, "conversational")
    drepo = MockRepo("dataset", data_id)
    dsha = drepo.add_commit(drepo_dir, "Upload dataset")
    hub.add_repo(drepo)

    # --- download into a fresh cache -----------------------------------------------------------------
    cache = os.path.join(out_dir, "hf_cache")
    shutil.rmtree(cache, ignore_errors=True)
    os.makedirs(out_dir, exist_ok=True)
    snapshot_download(model_id, revision=old, cache_dir=cache)
    hf_hub_download(model_id, "config.json", revision="v0.1", cache_dir=cache)
    n0 = len(hub.log)
    AutoTokenizer.from_pretrained(model_id, cache_dir=cache)
    AutoModelForCausalLM.from_pretrained(model_id, cache_dir=cache)
    tf_requests = hub.log[n0:]
    snapshot_download(model_id, cache_dir=cache)
    snapshot_download(data_id, repo_type="dataset", cache_dir=cache)
    n_online = len(hub.log)

    # --- verify offline: everything below must not send a single request to the mock Hub ------------
    info = scan_cache_dir(cache)
    assert not info.warnings, info.warnings
    scanned = {r.repo_id: r for r in info.repos}
    assert set(scanned) == {model_id, data_id}
    m_revs = {r.commit_hash: r for r in scanned[model_id].revisions}
    assert set(m_revs) == {old, new}
    assert set(m_revs[new].refs) == {"main"} and set(m_revs[old].refs) == {"v0.1"}
    for sha, r in m_revs.items():
        got = sorted(str(f.file_path.relative_to(r.snapshot_path)) for f in r.files)
        assert got == sorted(mrepo.commits[sha]), (got, sorted(mrepo.commits[sha]))
    d_revs = {r.commit_hash: r for r in scanned[data_id].revisions}
    assert set(d_revs) == {dsha} and set(d_revs[dsha].refs) == {"main"}
    assert sorted(str(f.file_path.relative_to(d_revs[dsha].snapshot_path)) for f in d_revs[dsha].files) == sorted(
        drepo.commits[dsha])
    for repo, rtype in ((mrepo, "model"), (drepo, "dataset")):
        for rev in [*repo.refs, *repo.commits]:
            sha = repo.resolve(rev)
            for rel, e in repo.commits[sha].items():
                p = hf_hub_download(repo.repo_id, rel, repo_type=rtype, revision=rev, cache_dir=cache,
                                    local_files_only=True)
                assert p == os.path.join(cache, hh.file_download.repo_folder_name(repo_id=repo.repo_id, repo_type=rtype),
                                         "snapshots", sha, *rel.split("/")), p
                assert os.path.islink(p) and os.path.basename(os.readlink(p)) == e.etag
                assert file_digests(p)[2] == e.sha256
            snap = snapshot_download(repo.repo_id, repo_type=rtype, revision=rev, cache_dir=cache,
                                     local_files_only=True)
            assert os.path.basename(snap) == sha
    # adapter_kwargs: transformers 5.23's AutoModel*.from_pretrained probes adapter_config.json with only
    # token/revision from adapter_kwargs, i.e. ignoring cache_dir and local_files_only (=> a Hub request and the
    # default cache), unless they are passed here too.
    offline = dict(cache_dir=cache, local_files_only=True)
    loaded = AutoModelForCausalLM.from_pretrained(model_id, **offline, adapter_kwargs=dict(offline),
                                                  attn_implementation="eager").eval()
    ltok = AutoTokenizer.from_pretrained(model_id, cache_dir=cache, local_files_only=True)
    sd0, sd1 = model.state_dict(), loaded.state_dict()
    assert sd0.keys() == sd1.keys() and all(torch.equal(sd0[k], sd1[k]) for k in sd0)
    assert ltok.chat_template == CHAT_TEMPLATE and ltok.eos_token == "<|im_end|>" and ltok.bos_token is None
    old_gen = json.load(open(hf_hub_download(model_id, "generation_config.json", revision="v0.1", cache_dir=cache,
                                             local_files_only=True)))
    new_gen = json.load(open(hf_hub_download(model_id, "generation_config.json", cache_dir=cache,
                                             local_files_only=True)))
    assert "max_new_tokens" not in old_gen and new_gen["max_new_tokens"] == 32
    dsnap = snapshot_download(data_id, repo_type="dataset", cache_dir=cache, local_files_only=True)
    loaded_default = datasets.load_dataset(dsnap)
    loaded_conv = datasets.load_dataset(dsnap, "conversational")
    assert loaded_default["train"].to_list() == std[:N_TRAIN] and loaded_default["test"].to_list() == std[N_TRAIN:]
    assert loaded_conv["train"].to_list() == conv
    assert len(hub.log) == n_online, hub.log[n_online:]

    # --- saved_to_disk datasets ----------------------------------------------------------------------
    saved = {}
    for name, obj in (
        ("saved_dataset", datasets.DatasetDict({"train": ds_train, "test": ds_test})),
        ("saved_dataset_single", ds_test),
        ("saved_dataset_conversational", ds_conv),
    ):
        d = os.path.join(out_dir, name)
        shutil.rmtree(d, ignore_errors=True)
        obj.save_to_disk(d)
        back = datasets.load_from_disk(d)
        saved[name] = describe_saved(d, back)

    # --- log-probs with the model loaded from the cache ----------------------------------------------
    p0 = std[0]
    logprobs = {k: completion_logprob(loaded, ltok, p0["prompt"], p0[k]) for k in ("chosen", "rejected")}

    # --- manifest ------------------------------------------------------------------------------------
    def parquet_schema(path):
        import pyarrow.parquet as pq
        return str(pq.read_schema(path).remove_metadata())

    manifest = {
        "generator": "scripts/oracle/make_hf_fixtures.py",
        "versions": {"huggingface_hub": hh.__version__, "transformers": transformers.__version__,
                     "datasets": datasets.__version__, "torch": torch.__version__},
        "hf_cache": {
            "dir": "hf_cache",
            "model": {
                "repo_id": model_id, "repo_type": "model", "storage_folder": "models--dpo-rs--tiny-llama",
                "commits": {"main": new, "older": old},
                "refs": dict(sorted(mrepo.refs.items())),
                "snapshots": {sha: [e.manifest() for _, e in sorted(mrepo.commits[sha].items())] for sha in mrepo.order},
                "changed_in_main": sorted(k for k in mrepo.commits[new]
                                          if mrepo.commits[new][k].etag != mrepo.commits[old][k].etag),
            },
            "dataset": {
                "repo_id": data_id, "repo_type": "dataset", "storage_folder": "datasets--dpo-rs--tiny-pairs",
                "commits": {"main": dsha}, "refs": {"main": dsha},
                "snapshots": {dsha: [e.manifest() for _, e in sorted(drepo.commits[dsha].items())]},
                "configs": {
                    "default": {"splits": {
                        "train": {"file": "data/train-00000-of-00001.parquet", "num_rows": N_TRAIN, "first_row": std[0]},
                        "test": {"file": "data/test-00000-of-00001.parquet", "num_rows": N_TEST,
                                 "first_row": std[N_TRAIN]}},
                        "parquet_schema": parquet_schema(os.path.join(dsnap, "data/train-00000-of-00001.parquet"))},
                    "conversational": {"splits": {
                        "train": {"file": "conversational/train-00000-of-00001.parquet", "num_rows": N_TRAIN,
                                  "first_row": conv[0]}},
                        "parquet_schema": parquet_schema(
                            os.path.join(dsnap, "conversational/train-00000-of-00001.parquet"))},
                },
            },
            "transformers_requests_on_first_load": [f"{m} {p}" + (f"?{q}" if q else "") for m, p, q in tf_requests],
            "layout": describe_dir(cache),
        },
        "saved_datasets": saved,
        "tiny_model": {
            "vocab_size": len(ltok), "special_tokens": {t: ltok.convert_tokens_to_ids(t) for t in
                                                       ("<|endoftext|>", "<|im_start|>", "<|im_end|>")},
            "eos_token": ltok.eos_token, "pad_token": ltok.pad_token, "bos_token": ltok.bos_token,
            "logprob_method": "no chat template; add_special_tokens=False; prompt_ids=tok(prompt), "
                              "full=tok(prompt+completion), completion_ids=full[len(prompt_ids):] "
                              "(== tok(completion)); no EOS; float32 CPU eager; sum_t log_softmax(logits[t-1])[full[t]]",
            "first_train_pair": {"prompt": p0["prompt"], **logprobs},
        },
    }
    with open(os.path.join(out_dir, "hf_fixtures.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, ensure_ascii=False)
        f.write("\n")
    return manifest


def describe_saved(d, back):
    import datasets
    out = {"dir": os.path.basename(d), "files": describe_dir(d)}
    if isinstance(back, datasets.DatasetDict):
        out["kind"] = "DatasetDict"
        out["dataset_dict_json"] = json.load(open(os.path.join(d, "dataset_dict.json")))
        items = [(s, os.path.join(d, s), back[s]) for s in back]
    else:
        out["kind"] = "Dataset"
        items = [(None, d, back)]
    out["splits"] = {}
    for split, sd, ds in items:
        fmt, magic, table = arrow_schema_of(os.path.join(sd, "data-00000-of-00001.arrow"))
        assert fmt == "stream", fmt
        assert table.num_rows == len(ds)
        out["splits"][split or "_"] = {
            "num_rows": len(ds), "first_row": ds[0], "arrow_ipc_format": fmt, "first_bytes_hex": magic.hex(),
            "arrow_schema": str(table.schema.remove_metadata()),
            "schema_metadata_keys": sorted(k.decode() for k in (table.schema.metadata or {})),
            "state_json": json.load(open(os.path.join(sd, "state.json"))),
        }
    return out


# ------------------------------------------------------------------------------------------------
def make_real(cache="/tmp/hfcache_real", saved="/tmp/saved_hh",
              src_model="/tmp/oracle/smollm2-135m-instruct-f32",
              hh_path="/work/shared/data/hh-rlhf/helpful-base/test.jsonl.gz", n=64):
    import datasets
    import huggingface_hub as hh
    import torch
    from huggingface_hub import scan_cache_dir, snapshot_download
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    sys.path.insert(0, os.path.join(REPO_ROOT, "..", "shared", "tools", "oracle"))
    sys.path.insert(0, "/work/shared/tools/oracle")
    from hh_to_pairs import convert

    hub = HUB
    assert hh.constants.ENDPOINT == hub.endpoint
    model_id, data_id = "HuggingFaceTB/SmolLM2-135M-Instruct", "dpo-rs/hh-helpful-pairs"
    mrepo = MockRepo("model", model_id)
    msha = mrepo.add_commit(src_model, "Upload converted f32 SmolLM2-135M-Instruct")
    hub.add_repo(mrepo)

    pairs = []
    with gzip.open(hh_path, "rt", encoding="utf-8") as f:
        for line in f:
            if len(pairs) >= n:
                break
            if line.strip():
                pairs.append(convert(json.loads(line)))
    ds = datasets.Dataset.from_list(pairs)
    drepo_dir = os.path.join(_SCRATCH, "stage-real", "hh-helpful-pairs")
    os.makedirs(drepo_dir)
    push_style_parquet(drepo_dir, {"test": ds}, "default")
    drepo = MockRepo("dataset", data_id)
    dsha = drepo.add_commit(drepo_dir, "Upload dataset")
    hub.add_repo(drepo)

    shutil.rmtree(cache, ignore_errors=True)
    snapshot_download(model_id, cache_dir=cache)
    snapshot_download(data_id, repo_type="dataset", cache_dir=cache)
    n_online = len(hub.log)

    info = scan_cache_dir(cache)
    assert not info.warnings and {r.repo_id for r in info.repos} == {model_id, data_id}
    msnap = snapshot_download(model_id, cache_dir=cache, local_files_only=True)
    dsnap = snapshot_download(data_id, repo_type="dataset", cache_dir=cache, local_files_only=True)
    assert datasets.load_dataset(dsnap)["test"].to_list() == pairs
    shutil.rmtree(saved, ignore_errors=True)
    datasets.DatasetDict({"train": ds}).save_to_disk(saved)
    assert datasets.load_from_disk(saved)["train"].to_list() == pairs

    offline = dict(cache_dir=cache, local_files_only=True)  # adapter_kwargs: see make_tiny
    model = AutoModelForCausalLM.from_pretrained(model_id, **offline, adapter_kwargs=dict(offline),
                                                 dtype=torch.float32, attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(model_id, cache_dir=cache, local_files_only=True)
    lp = {k: completion_logprob(model, tok, pairs[0]["prompt"], pairs[0][k])["sum_logprob"]
          for k in ("chosen", "rejected")}
    assert len(hub.log) == n_online, hub.log[n_online:]
    man = {
        "cache": cache, "saved_dataset": saved,
        "model": {"repo_id": model_id, "commit": msha, "snapshot": msnap,
                  "files": [e.manifest() for _, e in sorted(mrepo.commits[msha].items())]},
        "dataset": {"repo_id": data_id, "commit": dsha, "snapshot": dsnap,
                    "files": [e.manifest() for _, e in sorted(drepo.commits[dsha].items())],
                    "splits": {"test": len(pairs)}, "first_row": pairs[0]},
        "first_pair_sum_logprob_no_template": lp,
        "cache_size_bytes": dir_size(cache),
    }
    with open("/tmp/hf_real_manifest.json", "w", encoding="utf-8") as f:
        json.dump(man, f, indent=1, ensure_ascii=False)
    return man


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", default=DEFAULT_OUT)
    ap.add_argument("--real", action="store_true", help="also build /tmp/hfcache_real and /tmp/saved_hh")
    ap.add_argument("--skip-tiny", action="store_true", help="do not (re)build the committed fixtures")
    args = ap.parse_args()
    global HUB
    # The mock Hub must be up, and HF_ENDPOINT set, before huggingface_hub is imported (it reads the
    # endpoint once, at import).
    HUB = MockHub()
    os.environ["HF_ENDPOINT"] = HUB.endpoint
    assert "huggingface_hub" not in sys.modules
    try:
        if not args.skip_tiny:
            man = make_tiny(os.path.abspath(args.out_dir))
            m = man["hf_cache"]["model"]
            print(f"tiny-llama main={m['commits']['main']} older={m['commits']['older']}")
            print(f"tiny-pairs main={man['hf_cache']['dataset']['commits']['main']}")
            for name in ("hf_cache", "saved_dataset", "saved_dataset_single", "saved_dataset_conversational"):
                print(f"{name}: {dir_size(os.path.join(args.out_dir, name))} bytes")
        if args.real:
            r = make_real()
            print(f"real: model commit {r['model']['commit']}, dataset commit {r['dataset']['commit']}, "
                  f"cache {r['cache_size_bytes']} bytes; manifest /tmp/hf_real_manifest.json")
    finally:
        HUB.close()
        shutil.rmtree(_SCRATCH, ignore_errors=True)


if __name__ == "__main__":
    main()
