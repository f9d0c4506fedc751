"""Every profile or CLI value that reaches a shell or an #SBATCH line is validated or quoted."""

from __future__ import annotations

import pytest

from launch_helpers import run_submit

BAD = ["gpu; rm -rf ~", "$(id)", "a\nb", "`id`", "x y", "a'b", "a|b&c"]


@pytest.mark.parametrize("flag", ["--partition", "--account", "--qos", "--run-name"])
@pytest.mark.parametrize("value", BAD)
def test_cli_injection_rejected(flag, value):
    if flag != "--run-name" and value == "a|b&c":
        value = "a;b"
    res = run_submit("--phase", "0", "--dry-run", flag, value, timeout=60)
    assert res.returncode == 2, res.stdout
    assert res.stdout == ""
    err = res.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert "refused" in err or "forbidden" in err or "must match" in err


@pytest.mark.parametrize("yaml_text", [
    "partition: 'gpu; rm -rf ~'\n",
    "account: '$(id)'\n",
    "qos: \"a\\nb\"\n",
    "constraint: 'a100 && $(id)'\n",
    "env: {'X; rm -rf ~': '1'}\n",
    "env: {X: \"a\\nb\"}\n",
    "setup: [\"module load x\\nrm -rf ~\"]\n",
    "python: '/usr/bin/python3; id'\n",
    "log_dir: '$(id)'\n",
])
def test_profile_injection_rejected(tmp_path, yaml_text):
    path = tmp_path / "evil.yaml"
    path.write_text(yaml_text)
    res = run_submit("--phase", "0", "--dry-run", "--profile", str(path), timeout=60)
    assert res.returncode == 2, res.stdout
    err = res.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and str(path) in err, err


@pytest.mark.parametrize("override", ["max_steps=$(id)", "run_name=`id`", "x;y=1", "lr=1\nid", "a b=1",
                                      "gate.max_val_nmse=1;id"])
def test_override_injection_rejected(override):
    res = run_submit("--phase", "0", "--dry-run", override, timeout=60)
    assert res.returncode == 2, res.stdout
    err = res.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, err


def test_env_values_are_quoted(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("env: {GREETING: 'hello world (x)'}\nbackend: single\n")
    res = run_submit("--phase", "0", "--dry-run", "--profile", str(path), timeout=60)
    assert res.returncode == 0, res.stderr
    assert "export GREETING='hello world (x)'" in res.stdout
