"""`tagpr doctor`'s checks: each finding names what is wrong and how to fix it; none starts Ray."""

import socket

import pytest

from tagpr import doctor
from tagpr.jobs.cli import main


@pytest.fixture
def cfg():
    from tagpr.config import load_config

    return load_config(None, [])


def test_an_unreachable_or_malformed_ray_address_fails_with_a_fix(cfg, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    [row] = doctor.check_ray_address(cfg)
    assert row.status == doctor.FAIL and "does not answer" in row.detail and "RAY_ADDRESS" in row.detail
    monkeypatch.setenv("RAY_ADDRESS", "not-an-address")
    [row] = doctor.check_ray_address(cfg)
    assert row.status == doctor.FAIL and "not host:port" in row.detail and row.fix


def test_a_listening_ray_address_passes(cfg, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        monkeypatch.setenv("RAY_ADDRESS", f"ray://127.0.0.1:{s.getsockname()[1]}")
        [row] = doctor.check_ray_address(cfg)
    assert row.status == doctor.OK


def test_a_remote_cluster_without_a_token_fails(cfg, monkeypatch, tmp_path):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)  # the integration tests' cluster turns it off
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    [row] = doctor.check_ray_auth(cfg)
    assert row.status == doctor.FAIL and "RAY_AUTH_MODE=token" in row.fix
    (tmp_path / "missing").write_text("secret")
    assert doctor.check_ray_auth(cfg)[0].status == doctor.OK
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert doctor.check_ray_auth(cfg)[0].status == doctor.WARN


def test_a_taken_service_port_and_an_exposed_service_without_token_warn(cfg, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = cfg.model_copy(update={"service": cfg.service.model_copy(update={"port": s.getsockname()[1]})})
        [row] = doctor.check_ports(taken)
    assert row.status == doctor.WARN and "in use" in row.detail
    monkeypatch.delenv(cfg.service.token_env, raising=False)
    exposed = cfg.model_copy(update={"service": cfg.service.model_copy(update={"host": "0.0.0.0", "port": 0})})
    [row] = doctor.check_ports(exposed)
    assert row.status == doctor.WARN and cfg.service.token_env in row.fix


def test_an_exposed_service_with_a_token_file_passes_and_a_broken_one_fails(cfg, monkeypatch, tmp_path):
    name = cfg.service.token_env
    monkeypatch.delenv(name, raising=False)
    exposed = cfg.model_copy(update={"service": cfg.service.model_copy(update={"host": "0.0.0.0", "port": 0})})
    (tmp_path / "token").write_text("s3cret\n")
    monkeypatch.setenv(f"{name}_FILE", str(tmp_path / "token"))
    assert doctor.check_ports(exposed)[0].status == doctor.OK
    monkeypatch.setenv(f"{name}_FILE", str(tmp_path / "absent"))
    [row] = doctor.check_ports(exposed)
    assert row.status == doctor.FAIL and f"{name}_FILE" in row.detail and "absent" in row.detail


def test_both_vllm_builds_installed_is_a_failure(monkeypatch):
    monkeypatch.setattr(doctor, "_version", lambda dist: "1.0")
    rows = {r.name: r for r in doctor.check_packages()}
    assert rows["vllm"].status == doctor.FAIL and "uninstall" in rows["vllm"].fix


def test_gpu_rollout_on_a_host_without_gpus_fails(cfg):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this host has a GPU")
    gpu = cfg.model_copy(update={"rollout": cfg.rollout.model_copy(update={"num_gpus": 1})})
    rows = {r.name: r for r in doctor.check_devices(gpu)}
    assert rows["gpus"].status == doctor.FAIL and "rollout.num_gpus" in rows["gpus"].fix


def test_the_command_exits_nonzero_on_a_failed_check(monkeypatch, capsys):
    monkeypatch.setenv("RAY_ADDRESS", "not-an-address")
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "fail ray address" in out and "fix:" in out
