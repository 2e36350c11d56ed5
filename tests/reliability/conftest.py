"""The reliability suite uses the session's cluster fixtures from tests/conftest.py."""


def deploy_untrained(name: str, overrides: list[str], folder, token_env: str):
    """Deploy the reward service at ``/<name>`` on an untrained PRMU saved under ``folder`` (the
    suite tests the service's behaviour, not the model's scores); returns the config."""
    from services.reward.deploy import deploy
    from tagpr.config import load_config
    from tagpr.prmu import checkpoint

    cfg = load_config(None, overrides)
    ckpt = folder / "prmu"
    checkpoint.save(checkpoint.build_net(cfg.prmu, 384, 0), ckpt, cfg.prmu, "minilm", 384, {})
    deploy(cfg, str(ckpt), token_env=token_env, name=name, route_prefix=f"/{name}")
    return cfg
