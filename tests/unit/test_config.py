"""Reading configuration: every failure is a ConfigError (exit 2) naming what was wrong."""

from __future__ import annotations

import errno

import pytest
from oslo_config import cfg

from virt.config import build_conf, make_state_dir
from virt.errors import ConfigError


def test_a_config_file_this_user_cannot_read_names_the_file(tmp_path, monkeypatch):
    path = tmp_path / "virtkit.conf"
    path.write_text("[DEFAULT]\nhost = h\n")

    def denied(self):  # what open() raises for a 0600 file of another user
        raise PermissionError(errno.EACCES, "Permission denied", self.filename)

    monkeypatch.setattr(cfg.ConfigParser, "parse", denied)
    with pytest.raises(ConfigError, match=f"cannot read config file {path}: permission denied"):
        build_conf(path)


def test_a_config_file_that_is_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "virtkit.conf"
    path.write_bytes(b"[DEFAULT]\nhost = \xff\n")
    with pytest.raises(ConfigError, match=f"config file {path} is not UTF-8 text") as err:
        build_conf(path)
    assert err.value.exit_code == 2


def test_make_state_dir_failure_names_state_path_and_the_os_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    conf = build_conf(overrides={"state_path": str(blocker / "state")})
    with pytest.raises(ConfigError, match="cannot create state_path .*: Not a directory"):
        make_state_dir(conf)


def test_make_state_dir_creates_it_private_but_passable(tmp_path):
    conf = build_conf(overrides={"state_path": str(tmp_path / "a" / "state")})
    make_state_dir(conf)
    assert (tmp_path / "a" / "state").stat().st_mode & 0o777 == 0o711
    make_state_dir(conf)  # an existing directory is left as it is
