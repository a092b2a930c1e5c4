from tests.helpers import basic


def test_check_is_open(app):
    resp = app.test_client().get("/check")
    assert resp.status_code == 200
    assert resp.data == b"ok\n"


def test_missing_password_is_401_with_realm(app):
    resp = app.test_client().get("/apps")
    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"] == 'Basic realm="convox"'
    assert resp.get_json() == {"error": "invalid authentication"}


def test_wrong_password_is_401(app):
    resp = app.test_client().get("/apps", headers=basic("not-the-password"))
    assert resp.status_code == 401


def test_any_username_with_the_password_is_accepted(app, settings):
    resp = app.test_client().get("/apps", headers=basic(settings.password, user="someone"))
    assert resp.status_code == 200
    assert resp.get_json() == []


def test_system_reports_a_version_convox_clients_accept(client):
    body = client.get("/system").get_json()
    # The Convox CLI compares versions as strings; anything below this selects its legacy API.
    assert body["version"] > "20180708231844"
    assert body["status"] == "running"
    assert body["parameters"]["Builder"] == "buildkit"  # RACK_BUILDER's default
