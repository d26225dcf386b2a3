"""The model zoo API: built-in entries, zoo: references, Caffe readme entries, and
publish -> add_index -> fetch -> load between two users.

Every user directory (config, cache, zoo) is under tmp_path; downloads come from a
server on 127.0.0.1 started here (tests/test_zoo_fetch.py) or from local files.
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from dlsoft import zoo
from dlsoft.errors import DlsoftError
from dlsoft.model_zoo.entry import file_digest
from test_zoo_fetch import PAYLOAD, ZooServer

CLASSIC = {"bvlc_alexnet": "9116a64c0fbe4459d18f4bb6b56d647b63920377",
           "bvlc_reference_caffenet": "4c8d77deb20ea792f84eb5e6d0a11ca0a8660a46",
           "bvlc_googlenet": "405fc5acd08a3bb12de8ee5e23a96bec22f08204"}

TINY_DEPLOY = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 1 dim: 28 dim: 28 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: %d weight_filler { type: "gaussian" std: 0.1 }
                              bias_filler { type: "constant" value: 0.2 } } }
"""


def become(monkeypatch, home: Path) -> Path:
    """Switch to the user whose config and cache live under ``home``."""
    monkeypatch.setenv("DLSOFT_CONFIG", str(home / "config"))
    monkeypatch.setenv("DLSOFT_CACHE", str(home / "cache"))
    return home


@pytest.fixture(autouse=True)
def isolated_user(tmp_path, monkeypatch):
    """Never read or write the real ~/.config or ~/.cache."""
    return become(monkeypatch, tmp_path / "default_user")


def make_tiny_entry(folder: Path, num_output: int = 10, metrics=True) -> np.ndarray:
    """An entry folder with a tiny deploy net and its weights; returns its output on fixed input."""
    import dlsoft

    folder.mkdir(parents=True)
    (folder / "deploy.prototxt").write_text(TINY_DEPLOY % num_output)
    net = dlsoft.Net(str(folder / "deploy.prototxt"), phase="TEST")
    net.save(str(folder / "tiny.caffemodel"))
    draft = {"name": folder.name, "description": "a tiny softmax regression", "task": "classification"}
    if metrics:
        draft["metrics"] = [{"name": "accuracy", "value": 0.5, "data": "two synthetic images"}]
    (folder / "zoo.yaml").write_text(yaml.safe_dump(draft))
    return np.array(net.forward(data=fixed_input())["ip"])


def fixed_input() -> np.ndarray:
    return np.linspace(0, 1, 2 * 28 * 28, dtype=np.float32).reshape(2, 1, 28, 28)


# ------------------------------------------------------------------ built-in entries
def test_builtin_entries_are_listed():
    names = [e.name for e in zoo.list_entries()]
    for name in ["lenet_mnist", "mlp_digits", "cifar10_quick", *CLASSIC]:
        assert name in names
    assert zoo.get_entry("lenet_mnist").origin == "builtin"


def test_builtin_file_records_match_the_files():
    for entry in zoo.builtin_entries():
        for role in ("deploy", "train_val", "solver"):
            assert role in entry.files, (entry.name, role)
        for role, record in entry.files.items():
            path = entry.folder / record["path"]
            assert record["sha256"] == file_digest(path), (entry.name, role)
            assert record["size"] == path.stat().st_size


def test_classic_nets_are_weightless_and_point_at_bvlc_weights():
    for name, sha1 in CLASSIC.items():
        entry = zoo.get_entry(name)
        assert not entry.ships_weights and entry.meta["weights"] is False
        weights = entry.file_record("weights")
        assert weights["url"] == f"http://dl.caffe.berkeleyvision.org/{name}.caffemodel"
        assert weights["sha1"] == sha1
        assert (entry.folder / "LICENSE").read_text().count("BSD 2-Clause") == 1
        assert not zoo.is_downloaded(entry) and zoo.summary_row(entry)["weights"] == "fetchable"
    assert zoo.get_entry("cifar10_quick").file_record("weights") is None
    assert zoo.weights_status(zoo.get_entry("cifar10_quick")) == "none"


def test_classic_configs_parse():
    from dlsoft.netdef.io import read_net, read_solver

    for name in ["cifar10_quick", *CLASSIC]:
        entry = zoo.get_entry(name)
        deploy = read_net(entry.folder / "deploy.prototxt")
        assert deploy.layer[-1].type == "Softmax" and deploy.layer[0].type == "Input"
        read_net(entry.folder / "train_val.prototxt")
        assert read_solver(entry.folder / "solver.prototxt").net == "train_val.prototxt"


# ------------------------------------------------------------------ zoo: references
def test_resolve_zoo_references():
    lenet = zoo.BUILTIN_DIR / "lenet_mnist"
    assert zoo.resolve("examples/lenet.prototxt") == "examples/lenet.prototxt"
    assert zoo.resolve(Path("x.caffemodel"), "weights") == Path("x.caffemodel")
    assert zoo.resolve("zoo:lenet_mnist") == lenet / "deploy.prototxt"
    assert zoo.resolve("zoo:lenet_mnist", "train_val") == lenet / "train_val.prototxt"
    assert zoo.resolve("zoo:lenet_mnist", "solver") == lenet / "solver.prototxt"
    assert zoo.resolve("zoo:lenet_mnist/solver.prototxt", "model") == lenet / "solver.prototxt"
    assert zoo.resolve("zoo:cifar10_quick/solver_lr1.prototxt").name == "solver_lr1.prototxt"
    with pytest.raises(DlsoftError, match="has no weights"):
        zoo.resolve("zoo:cifar10_quick", "weights")
    with pytest.raises(DlsoftError, match="unknown zoo file kind 'mean'"):
        zoo.resolve("zoo:lenet_mnist", "mean")
    with pytest.raises(DlsoftError, match="has no file 'mean.binaryproto'"):
        zoo.resolve("zoo:lenet_mnist/mean.binaryproto")


def test_weights_are_downloaded_only_when_asked(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(zoo, "download", no_network)
    assert zoo.resolve("zoo:bvlc_alexnet").name == "deploy.prototxt"
    with pytest.raises(DlsoftError, match="not downloaded yet: run `dlsoft zoo fetch bvlc_alexnet`"):
        zoo.resolve("zoo:bvlc_alexnet", "weights", download_missing=False)
    written = zoo.copy_entry("bvlc_alexnet", Path(zoo.cache_dir()) / "alexnet_copy")
    assert sorted(p.name for p in written) == ["LICENSE", "deploy.prototxt", "solver.prototxt",
                                                "train_val.prototxt", "zoo.yaml"]


def test_unknown_names_suggest_close_ones():
    with pytest.raises(DlsoftError, match="no zoo entry named 'lenet_mnst'; did you mean lenet_mnist"):
        zoo.get_entry("lenet_mnst")
    with pytest.raises(DlsoftError, match="known entries: .*lenet_mnist"):
        zoo.get_entry("resnet152")


def test_copy_entry_makes_an_editable_entry(tmp_path):
    written = zoo.copy_entry("zoo:cifar10_quick", tmp_path / "mine")
    assert {p.name for p in written} >= {"deploy.prototxt", "solver.prototxt", "solver_lr1.prototxt", "zoo.yaml"}
    assert zoo.get_entry(str(tmp_path / "mine")).name == "cifar10_quick"
    with pytest.raises(DlsoftError, match="already holds"):
        zoo.copy_entry("cifar10_quick", tmp_path / "mine")
    zoo.copy_entry("cifar10_quick", tmp_path / "mine", overwrite=True)


# ------------------------------------------------------------------ Caffe readme entries
def write_caffe_readme(folder: Path, url: str, sha1: str) -> None:
    folder.mkdir(parents=True)
    (folder / "deploy.prototxt").write_text(TINY_DEPLOY % 10)
    (folder / "readme.md").write_text(
        "---\nname: Tiny Test Model\ncaffemodel: tiny_model.caffemodel\n"
        f"caffemodel_url: {url}\nlicense: unrestricted\nsha1: {sha1}\n"
        "caffe_commit: 709dc15af4a06bebda027c1eb2b3f3e3375d5077\n---\n\n"
        "A model for the tests.\nTwo lines.\n\n## License\n\nUnrestricted.\n")


def test_caffe_readme_folder_is_an_entry_and_its_sha1_is_checked(tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    (www / "tiny_model.caffemodel").write_bytes(PAYLOAD)
    with ZooServer(www) as server:
        good = tmp_path / "tiny_model"
        write_caffe_readme(good, f"{server.url}/tiny_model.caffemodel", hashlib.sha1(PAYLOAD).hexdigest())
        entry = zoo.get_entry(str(good))
        assert entry.name == "tiny_model" and entry.licence == "unrestricted"
        assert entry.description == "Tiny Test Model A model for the tests. Two lines."
        assert not entry.ships_weights and not zoo.is_downloaded(entry)
        path = zoo.fetch(str(good))
        assert path == zoo.cache_dir() / "zoo" / "tiny_model" / "tiny_model.caffemodel"
        assert path.read_bytes() == PAYLOAD and zoo.is_downloaded(entry)

        bad = tmp_path / "bad" / "tiny_bad"
        write_caffe_readme(bad, f"{server.url}/tiny_model.caffemodel", "0" * 40)
        with pytest.raises(DlsoftError, match="checksum mismatch"):
            zoo.fetch(str(bad))
        assert not list((zoo.cache_dir() / "zoo").glob("tiny_bad/*"))

    # weights placed next to the readme (as Caffe's download script does) are used, and checked
    shutil.copyfile(www / "tiny_model.caffemodel", bad / "tiny_model.caffemodel")
    with pytest.raises(DlsoftError, match="does not match its recorded sha1"):
        zoo.local_path(zoo.get_entry(str(bad)), "weights")


# ------------------------------------------------------------------ sharing between users
def test_publish_add_index_fetch_load_between_two_users(tmp_path, monkeypatch):
    # Alice trains a net in her zoo directory and publishes it.
    alice = become(monkeypatch, tmp_path / "alice")
    alice_zoo = alice / "zoo"
    expected = make_tiny_entry(alice_zoo / "tiny_net")
    published = zoo.publish(alice_zoo / "tiny_net")
    weights = published.files["weights"]
    assert weights["sha256"] == file_digest(alice_zoo / "tiny_net" / "tiny.caffemodel")
    index = yaml.safe_load((alice_zoo / "index.yaml").read_text())
    [record] = index["entries"]
    assert record["name"] == "tiny_net" and record["files"]["weights"]["path"] == "tiny_net/tiny.caffemodel"
    assert record["metrics"][0]["data"] == "two synthetic images"

    with ZooServer(alice_zoo) as server:
        # Bob, with his own config and cache, uses Alice's zoo over HTTP.
        bob = become(monkeypatch, tmp_path / "bob")
        assert "tiny_net" not in [e.name for e in zoo.list_entries()]
        assert [e.name for e in zoo.add_index(f"{server.url}/index.yaml")] == ["tiny_net"]
        assert zoo.added_indexes() == [f"{server.url}/index.yaml"]
        entry = zoo.get_entry("tiny_net")
        assert entry.origin == f"{server.url}/index.yaml" and not zoo.is_downloaded(entry)
        progress = []
        path = zoo.fetch("tiny_net", progress=lambda done, total: progress.append((done, total)))
        assert bob / "cache" in path.parents and progress[-1] == (weights["size"], weights["size"])
        net = zoo.load("tiny_net")
        assert net.phase == "TEST"
        np.testing.assert_allclose(net.forward(data=fixed_input())["ip"], expected, rtol=1e-6)
        assert zoo.resolve("zoo:tiny_net", "weights") == path
        copied = zoo.copy_entry("tiny_net", bob / "work")
        assert {p.name for p in copied} == {"deploy.prototxt", "tiny.caffemodel", "zoo.yaml"}
        assert zoo.get_entry(str(bob / "work")).files["weights"]["path"] == "tiny.caffemodel"

        # Alice's config never saw Bob's index.
        become(monkeypatch, alice)
        assert zoo.added_indexes() == []

        # Tampered weights on the server are refused for a new user.
        (alice_zoo / "tiny_net" / "tiny.caffemodel").write_bytes(b"not the published weights")
        carol = become(monkeypatch, tmp_path / "carol")
        zoo.add_index(f"{server.url}/index.yaml")
        with pytest.raises(DlsoftError, match="checksum mismatch"):
            zoo.fetch("tiny_net")
        assert not list((carol / "cache").rglob("*.caffemodel*"))


def test_an_index_shared_as_a_directory_or_file_url(tmp_path, monkeypatch):
    become(monkeypatch, tmp_path / "alice")
    expected = make_tiny_entry(tmp_path / "shared_zoo" / "tiny_net")
    zoo.publish(tmp_path / "shared_zoo" / "tiny_net", index=tmp_path / "shared_zoo" / "models.yaml")
    for user, location in [("dave", tmp_path / "shared_zoo" / "models.yaml"),
                           ("erin", (tmp_path / "shared_zoo" / "models.yaml").as_uri())]:
        become(monkeypatch, tmp_path / user)
        zoo.add_index(location)
        net = zoo.load("zoo:tiny_net")
        np.testing.assert_allclose(net.forward(data=fixed_input())["ip"], expected, rtol=1e-6)
        assert tmp_path / user / "cache" in zoo.resolve("zoo:tiny_net", "weights").parents
        assert zoo.remove_index(location) and zoo.added_indexes() == []


def test_publish_refuses_what_it_cannot_vouch_for(tmp_path):
    make_tiny_entry(tmp_path / "zoo" / "no_metric", metrics=False)
    with pytest.raises(DlsoftError, match="metrics: record what the weights reach"):
        zoo.publish(tmp_path / "zoo" / "no_metric")
    make_tiny_entry(tmp_path / "zoo" / "mismatch")
    (tmp_path / "zoo" / "mismatch" / "deploy.prototxt").write_text(TINY_DEPLOY % 7)
    with pytest.raises(DlsoftError, match="weights do not load into the deploy net"):
        zoo.publish(tmp_path / "zoo" / "mismatch")
    make_tiny_entry(tmp_path / "zoo" / "two_weights")
    shutil.copyfile(tmp_path / "zoo" / "two_weights" / "tiny.caffemodel", tmp_path / "zoo" / "two_weights" / "b.caffemodel")
    with pytest.raises(DlsoftError, match="exactly one weights file"):
        zoo.publish(tmp_path / "zoo" / "two_weights")
    assert not (tmp_path / "zoo" / "index.yaml").exists()
