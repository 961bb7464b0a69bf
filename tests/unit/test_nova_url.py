"""Where virtkit-recover takes Nova's database URL from (never a password on argv)."""

from __future__ import annotations

import pytest

from virt.config import build_conf
from virt.errors import ConfigError
from virt.recovery.nova_url import nova_db_url
from virt.recovery.options import register_opts

SECRET_URL = "postgresql://nova:hunter2@db.example/nova"


@pytest.fixture
def conf(tmp_path):
    def make(**recovery: str):
        path = tmp_path / "virtkit.conf"
        lines = ["[recovery]", *(f"{k} = {v}" for k, v in recovery.items())]
        path.write_text("\n".join(lines) + "\n")
        conf = build_conf(str(path))
        register_opts(conf)
        return conf
    return make


def test_without_nova_db_the_store_is_the_source(conf):
    assert nova_db_url(given=None, url_file=None, conf=conf(nova_connection=SECRET_URL),
                       environ={"VIRTKIT_NOVA_DB": SECRET_URL}) is None


def test_a_password_on_the_command_line_is_refused_without_echoing_it(conf):
    with pytest.raises(ConfigError) as caught:
        nova_db_url(given=SECRET_URL, url_file=None, conf=conf(), environ={})
    assert "hunter2" not in str(caught.value) + str(caught.value.hint)
    assert caught.value.exit_code == 2


def test_a_url_without_password_may_be_given(conf):
    url = "postgresql+psycopg:///nova?host=/var/run/postgresql"
    assert nova_db_url(given=url, url_file=None, conf=conf(), environ={}) == url


def test_precedence_file_then_environment_then_config(conf, tmp_path):
    url_file = tmp_path / "nova-url"
    url_file.write_text("\n" + SECRET_URL + "-file\n")
    url_file.chmod(0o600)
    configured = conf(nova_connection=SECRET_URL + "-conf",
                      nova_connection_file=str(url_file))
    assert nova_db_url(given="", url_file=None, conf=configured,
                       environ={"VIRTKIT_NOVA_DB": SECRET_URL + "-env"}) == SECRET_URL + "-env"
    assert nova_db_url(given="", url_file=None, conf=configured,
                       environ={}) == SECRET_URL + "-file"
    assert nova_db_url(given="", url_file=None, conf=conf(nova_connection=SECRET_URL),
                       environ={}) == SECRET_URL
    assert nova_db_url(given=None, url_file=str(url_file), conf=conf(),
                       environ={}) == SECRET_URL + "-file"


def test_nothing_configured_says_where_to_put_it(conf, tmp_path):
    with pytest.raises(ConfigError, match="no URL of Nova's database") as caught:
        nova_db_url(given="", url_file=None, conf=conf(), environ={})
    assert "VIRTKIT_NOVA_DB" in str(caught.value.hint)
    with pytest.raises(ConfigError, match="cannot read it"):
        nova_db_url(given=None, url_file=str(tmp_path / "missing"), conf=conf(), environ={})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        nova_db_url(given=None, url_file=str(tmp_path / "empty"), conf=conf(), environ={})
