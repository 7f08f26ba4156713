"""Wildbook's real path: WBIA's own web server with its job engine, started as a separate process through
the plugin's launcher, on a temporary database of real nyala photos, driven the way Wildbook drives it.

One server for the module (``python -m wbia_lightglue.serve --dbdir DB --web --port P --host 127.0.0.1``,
small config through ``WBIA_LIGHTGLUE_CONFIG_DIR``). Wildbook POSTs a job to ``/api/engine/query/graph/``
with a UUID ``jobid`` and a ``callback_url``; WBIA's engine workers (separate processes) run it and call back;
Wildbook reads ``/api/engine/job/result/`` and fetches review images from ``/api/query/graph/match/thumb/``.
The last test stops the server with SIGTERM and checks that no worker outlives it.
"""
from __future__ import annotations

import csv
import json
import math
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, List, Optional
from urllib.error import HTTPError
from urllib.parse import parse_qs, urlencode
from urllib.request import Request, urlopen

import numpy as np
import pytest

pytestmark = [pytest.mark.wbia, pytest.mark.server, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
# exhaustive (raw LightGlue sums) unless a test says otherwise
SMALL = {"max_num_keypoints": 256, "image_size": 256, "compile": False, "device": "cpu", "shortlist_k": 0}
INDIVIDUALS = ("100", "144", "85")  # left flanks; the query is the first photo of the first one
PER_INDIVIDUAL = 4
STARTUP_S = 240
JOB_S = 600

MAKE_DB = textwrap.dedent("""
    import json, pathlib, sys
    from wbia_lightglue.wbia_plugin import compat
    compat.apply()
    with compat.hidden_argv():
        import wbia
    dbdir, entries = sys.argv[1], json.loads(sys.argv[2])
    with compat.hidden_argv():
        ibs = wbia.opendb(dbdir=dbdir, allow_newdir=True)
    gids = ibs.add_images([e["path"] for e in entries])
    sizes = ibs.get_image_sizes(gids)
    aids = ibs.add_annots(gids, bbox_list=[(0, 0, w, h) for w, h in sizes], species_list=["nyala"] * len(gids))
    named = [(aid, e["name"]) for aid, e in zip(aids, entries) if e["name"]]
    ibs.set_annot_names([a for a, _ in named], [n for _, n in named])
    for aid, gid, e in zip(aids, gids, entries):  # spoil the database's own copies of some images
        path = pathlib.Path(ibs.get_image_paths([gid])[0])
        if e["role"] == "corrupt":
            path.write_bytes(b"this is not an image")
        elif e["role"] == "missing":
            path.unlink()
    uuids = {e["role"]: str(u) for e, u in zip(entries, ibs.get_annot_uuids(aids))}
    print("RESULT " + json.dumps(uuids))
""")


# ============================================================================ the server process
@dataclass
class Server:
    proc: subprocess.Popen
    base: str
    log: Path
    uuids: Dict[str, str]  # role -> annotation UUID
    names: Dict[str, Optional[str]]  # annotation UUID -> individual
    outside_config: Path
    timings: Dict[str, float] = field(default_factory=dict)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(config_dir: Path) -> Dict[str, str]:
    env = {**os.environ, "WBIA_LIGHTGLUE_CONFIG_DIR": str(config_dir), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in [str(ROOT), os.environ.get("PYTHONPATH", "")] if p)}
    env.pop("QT_QPA_PLATFORM", None)  # the launcher must choose the headless platform itself
    env.pop("DISPLAY", None)
    return env


def _entries(nyala: Path) -> List[Dict[str, Any]]:
    left: Dict[str, List[str]] = {}
    with (nyala / "labels.csv").open() as fh:
        for row in csv.DictReader(fh):
            if row["side"] == "left":
                left.setdefault(row["individual"], []).append(row["path"])
    entries = []
    for ind in INDIVIDUALS:
        for k, path in enumerate(sorted(left[ind], key=lambda p: int(Path(p).name.split("_")[0]))[:PER_INDIVIDUAL]):
            entries.append({"path": str(nyala / path), "name": ind, "role": f"{ind}_{k}"})
    spare = sorted(left["102"])  # photos whose database copies are spoilt after they are added
    entries.append({"path": str(nyala / spare[0]), "name": "102", "role": "corrupt"})
    entries.append({"path": str(nyala / spare[1]), "name": "102", "role": "missing"})
    return entries


def _children(pid: int) -> List[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(scope="module")
def server(tmp_path_factory, nyala_dir):
    tmp = tmp_path_factory.mktemp("wbia_server")
    config_dir = tmp / "v_config"
    config_dir.mkdir()
    (config_dir / "config.json").write_text(json.dumps(SMALL))
    (config_dir / "two_stage.json").write_text(json.dumps({**SMALL, "shortlist_k": 3}))
    outside = tmp / "outside.json"
    outside.write_text(json.dumps(SMALL))
    entries = _entries(nyala_dir)
    env = _env(config_dir)
    start = time.monotonic()
    made = subprocess.run([sys.executable, "-c", MAKE_DB, str(tmp / "db"), json.dumps(entries)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert made.returncode == 0, made.stderr[-3000:]
    uuids = json.loads(next(ln for ln in made.stdout.splitlines() if ln.startswith("RESULT "))[len("RESULT "):])
    names = {uuids[e["role"]]: e["name"] for e in entries}
    port = _free_port()
    log = tmp / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "wbia_lightglue.serve", "--dbdir", str(tmp / "db"), "--web",
                                 "--port", str(port), "--host", "127.0.0.1"],
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(proc, f"http://127.0.0.1:{port}", log, uuids, names, outside)
    try:
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"the server exited with {proc.returncode}:\n{server.log_text()[-4000:]}")
            try:
                if _get_json(server, "/api/test/heartbeat/")["response"] is True:
                    break
            except OSError:
                pass
            if time.monotonic() - start > STARTUP_S:
                raise AssertionError(f"no heartbeat after {STARTUP_S} s:\n{server.log_text()[-4000:]}")
            time.sleep(1)
        server.timings["startup_s"] = time.monotonic() - start
        yield server
    finally:
        if proc.poll() is None:  # the shutdown test did not run or failed: stop everything we started
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        print(f"\nserver tier timings: {json.dumps({k: round(v, 1) for k, v in server.timings.items()})}")


# ============================================================================ Wildbook's side
class _Callbacks:
    """A local callback receiver, as Wildbook's IBEISIA callback servlet: records each POSTed jobid."""

    def __init__(self) -> None:
        self.received: Dict[str, threading.Event] = {}
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                for jobid in parse_qs(body).get("jobid", []):
                    outer.event(jobid).set()
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/ia/callback"

    def event(self, jobid: str) -> threading.Event:
        with self.lock:
            return self.received.setdefault(jobid, threading.Event())

    def wait(self, jobid: str, timeout: float = JOB_S) -> None:
        assert self.event(jobid).wait(timeout), f"no callback for job {jobid} after {timeout} s"


@pytest.fixture(scope="module")
def callbacks():
    receiver = _Callbacks()
    yield receiver
    receiver.httpd.shutdown()


def _get_json(server: Server, path: str, **params) -> Any:
    url = server.base + path + ("?" + urlencode(params) if params else "")
    with urlopen(url, timeout=120) as response:
        return json.loads(response.read())


def _fancy(u: str) -> Dict[str, str]:
    return {"__UUID__": u}


def _submit(server: Server, callbacks: _Callbacks, query: str, database: List[str], lane: str = "fast",
            **config) -> str:
    """POST an identification job exactly as Wildbook's IBEISIA.sendIdentify builds it."""
    jobid = str(uuid.uuid4())  # Wildbook's Task id
    payload = {
        "jobid": jobid, "callback_url": callbacks.url, "callback_method": "POST", "lane": lane,
        "query_annot_uuid_list": [_fancy(query)], "query_annot_name_list": ["____"],
        "database_annot_uuid_list": [_fancy(u) for u in database],
        "database_annot_name_list": [server.names[u] or "____" for u in database],
        "matching_state_list": [], "query_config_dict": {"pipeline_root": "LightGlue", **config},
    }
    request = Request(server.base + "/api/engine/query/graph/", data=json.dumps(payload).encode(),
                      headers={"Content-Type": "application/json"}, method="POST")
    with urlopen(request, timeout=120) as response:
        body = json.loads(response.read())
    assert body["status"]["success"], body
    assert body["response"] == jobid
    return jobid


def _result(server: Server, jobid: str) -> Dict[str, Any]:
    """/api/engine/job/result/ parsed strictly: a NaN or Infinity anywhere is reported by name."""
    url = f"{server.base}/api/engine/job/result/?{urlencode({'jobid': jobid})}"
    with urlopen(url, timeout=120) as response:
        text = response.read().decode()
    constants: List[str] = []
    body = json.loads(text, parse_constant=lambda name: constants.append(name) or float(name))
    response_ = body["response"]
    response_["non_finite"] = constants
    return response_


def _database(server: Server) -> List[str]:
    return [server.uuids[f"{ind}_{k}"] for ind in INDIVIDUALS for k in range(PER_INDIVIDUAL)
            if (ind, k) != (INDIVIDUALS[0], 0)]


def _thumb(server: Server, reference: str, query: str, database: str, version: str) -> bytes:
    params = {"extern_reference": reference, "query_annot_uuid": query, "database_annot_uuid": database,
              "version": version}
    with urlopen(f"{server.base}/api/query/graph/match/thumb/?{urlencode(params)}", timeout=120) as response:
        assert response.status == 200
        return response.read()


# ============================================================================ tests
def test_identification_job_as_wildbook_sends_it(server, callbacks):
    import cv2

    query = server.uuids[f"{INDIVIDUALS[0]}_0"]
    database = _database(server)
    start = time.monotonic()
    jobid = _submit(server, callbacks, query, database)
    callbacks.wait(jobid)
    server.timings["first_job_s"] = time.monotonic() - start
    result = _result(server, jobid)
    assert result["status"] == "completed", result
    json_result = result["json_result"]
    cm = json_result["cm_dict"][query]
    duuids = [d["__UUID__"] for d in cm["dannot_uuid_list"]]
    # Wildbook's MatchResult pairs these lists index by index and throws on a length mismatch
    assert len(duuids) == len(cm["annot_score_list"]) == len(cm["score_list"]) == len(cm["dannot_extern_list"])
    assert sorted(duuids) == sorted(database)  # the query is never its own candidate
    assert isinstance(cm["dannot_extern_reference"], str) and cm["dannot_extern_reference"]
    assert isinstance(json_result["inference_dict"]["annot_pair_dict"]["review_pair_list"], list)
    assert all(math.isfinite(s) for s in cm["annot_score_list"])
    assert "NaN" not in result["non_finite"]  # WBIA writes -Infinity in score_list for non-best annotations
    ranked = sorted(zip(cm["annot_score_list"], duuids), reverse=True)
    assert server.names[ranked[0][1]] == INDIVIDUALS[0], ranked
    assert ranked[0][0] > 2 * max(s for s, u in ranked if server.names[u] != INDIVIDUALS[0])

    # Review images for the top candidate, as Wildbook fetches them (heatmask) and the other two versions
    top = ranked[0][1]
    assert cm["dannot_extern_list"][duuids.index(top)] is True
    images = {}
    for version in ("heatmask", "matches", "clean"):
        data = _thumb(server, cm["dannot_extern_reference"], query, top, version)
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and image.ndim == 3 and image.shape[2] == 3 and image.shape[1] > 200, version
        images[version] = image.astype(np.int16)
    assert images["heatmask"].shape == images["matches"].shape == images["clean"].shape  # same layout
    for a, b in (("heatmask", "clean"), ("matches", "clean"), ("heatmask", "matches")):
        assert np.abs(images[a] - images[b]).mean() > 3, (a, b)  # each version draws something else
    # The heat overlay colours the coat; the clean version is the photos as they are.
    saturation = {v: cv2.cvtColor(images[v].astype(np.uint8), cv2.COLOR_BGR2HSV)[..., 1].mean()
                  for v in ("heatmask", "clean")}
    assert saturation["heatmask"] > saturation["clean"] + 5, saturation

    # Every review image came from the matches of the job's scoring pass (no LightGlue run per image).
    log = server.log_text()
    renders = [ln for ln in log.splitlines() if "review image" in ln and " ms (matches " in ln]
    assert len(renders) >= 3 * len(database), renders[:3]
    assert all("from the scoring pass" in ln for ln in renders), [ln for ln in renders if "computed now" in ln]


def test_two_stage_job_takes_the_query_chips_path(server, callbacks):
    # the job engine calls ibs.query_chips, so a two-stage config takes the same path as in-process queries
    query = server.uuids[f"{INDIVIDUALS[0]}_0"]
    database = _database(server)
    jobid = _submit(server, callbacks, query, database, config_path="two_stage.json")
    callbacks.wait(jobid)
    result = _result(server, jobid)
    assert result["status"] == "completed", result
    cm = result["json_result"]["cm_dict"][query]
    duuids = [d["__UUID__"] for d in cm["dannot_uuid_list"]]
    assert sorted(duuids) == sorted(database)  # every annotation is ranked, shortlisted or not
    assert all(math.isfinite(s) for s in cm["annot_score_list"])
    ranked = sorted(zip(cm["annot_score_list"], duuids), reverse=True)
    assert server.names[ranked[0][1]] == INDIVIDUALS[0], ranked
    lines = [ln for ln in server.log_text().splitlines() if "two-stage query" in ln]
    assert any(f"over {len(database)} annotations, LightGlue on 3" in ln for ln in lines), lines[-3:]


def test_failing_jobs_complete_or_fail_with_a_clear_message(server, callbacks):
    query = server.uuids[f"{INDIVIDUALS[0]}_0"]
    database = _database(server)
    spoilt = [server.uuids["corrupt"], server.uuids["missing"]]
    start = time.monotonic()
    jobs = {
        "corrupt query": _submit(server, callbacks, server.uuids["corrupt"], database),
        "missing query": _submit(server, callbacks, server.uuids["missing"], database),
        "all scores zero": _submit(server, callbacks, query, spoilt),
        "config outside": _submit(server, callbacks, query, database, config_path=str(server.outside_config)),
        "config escape": _submit(server, callbacks, query, database, config_path="../outside.json"),
    }
    for jobid in jobs.values():
        callbacks.wait(jobid)
    server.timings["failing_jobs_s"] = time.monotonic() - start
    results = {name: _result(server, jobid) for name, jobid in jobs.items()}

    for name in ("corrupt query", "missing query"):
        assert results[name]["status"] == "exception", results[name]
        message = str(results[name]["json_result"])
        assert "query annotation" in message and "missing or unreadable" in message, message[-2000:]
    for name in ("config outside", "config escape"):
        assert results[name]["status"] == "exception", results[name]
        message = str(results[name]["json_result"])
        assert "config_path" in message and ("outside the config directory" in message or "'..'" in message), \
            message[-2000:]

    zero = results["all scores zero"]
    assert zero["status"] == "completed", zero
    cm = zero["json_result"]["cm_dict"][query]
    assert cm["annot_score_list"] == [0.0, 0.0]
    assert len(cm["score_list"]) == len(cm["dannot_uuid_list"]) == 2
    assert "NaN" not in zero["non_finite"], zero["non_finite"]


def test_fast_and_slow_lane_jobs_run_at_once(server, callbacks):
    database = _database(server)
    start = time.monotonic()
    fast = _submit(server, callbacks, server.uuids[f"{INDIVIDUALS[1]}_0"], database, lane="fast")
    slow = _submit(server, callbacks, server.uuids[f"{INDIVIDUALS[2]}_0"], database, lane="slow")
    for jobid in (fast, slow):
        callbacks.wait(jobid)
    server.timings["two_lanes_s"] = time.monotonic() - start
    for jobid in (fast, slow):
        result = _result(server, jobid)
        assert result["status"] == "completed", result
        assert len(next(iter(result["json_result"]["cm_dict"].values()))["annot_score_list"]) == len(database) - 1


def test_documented_post_call_answers_best_individual(server):
    import requests

    query = server.uuids[f"{INDIVIDUALS[0]}_0"]
    database = _database(server)
    url = server.base + "/api/review/query/chip/best/"

    def post(**fields):  # curl -F name=value: one multipart form field each
        return requests.post(url, files={k: (None, v) for k, v in fields.items()}, timeout=600)

    response = post(query_annot_uuid_list=json.dumps([query]), database_annot_uuid_list=json.dumps(database),
                    pipeline_root="LightGlue")
    assert response.status_code == 200, response.text[:2000]
    body = response.json()
    assert body["status"]["success"], body
    best = body["response"][0]
    assert best["query_annot_uuid"] == query
    assert best["name"] == INDIVIDUALS[0]
    assert server.names[best["annot_uuid"]] == INDIVIDUALS[0] and best["score"] > 0
    assert best["name_score"] == pytest.approx(best["score"])  # name score 'max'
    assert best["ranking"][0]["name"] == INDIVIDUALS[0]
    name_scores = [r["name_score"] for r in best["ranking"]]
    assert name_scores == sorted(name_scores, reverse=True)

    # the same with a config file of the config directory, and the errors a caller can make
    response = post(query_annot_uuid_list=json.dumps([query]), database_annot_uuid_list=json.dumps(database),
                    pipeline_root="LightGlue", config_path="config.json")
    assert response.status_code == 200 and response.json()["response"][0]["name"] == INDIVIDUALS[0]
    for fields, words in (
        ({"config_path": str(server.outside_config)}, "outside the config directory"),
        ({"pipeline_root": "HotSpotter"}, "pipeline_root=LightGlue"),
        ({"query_annot_uuid_list": json.dumps([str(uuid.uuid4())])}, "Unknown annot UUIDs"),
    ):
        sent = {"query_annot_uuid_list": json.dumps([query]), "database_annot_uuid_list": json.dumps(database),
                "pipeline_root": "LightGlue", **fields}
        response = post(**sent)
        assert response.status_code >= 400 and words in response.json()["status"]["message"], response.text[:2000]
    # WBIA's own GET rule on the same URL is still there (it wants an integer aid)
    try:
        code = urlopen(url, timeout=60).status
    except HTTPError as exc:
        code = exc.code
    assert code != 405


def test_zz_sigterm_stops_server_and_job_engine(server):
    """Last: SIGTERM (docker stop, systemd) stops the web server and every job-engine worker it started."""
    workers = _children(server.proc.pid)
    assert len(workers) >= 4, workers  # engine queue, collector, fast and slow lane engines
    start = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(timeout=120)
    deadline = time.monotonic() + 60
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.5)
    server.timings["shutdown_s"] = time.monotonic() - start
    assert not [pid for pid in workers if _alive(pid)], "job-engine processes outlived the server"
    with pytest.raises(OSError):
        urlopen(server.base + "/api/test/heartbeat/", timeout=5)
