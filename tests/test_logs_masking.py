"""Masking build secrets out of log lines."""

from __future__ import annotations

from rack.logs.masking import Masker, secret_values


def test_every_secret_is_replaced():
    m = Masker(["hunter2", "s3cr3t"])
    assert m.mask("pw=hunter2 and hunter2, token s3cr3t.") == "pw=*** and ***, token ***."
    assert m.mask("nothing here\n") == "nothing here\n"


def test_short_and_empty_values_are_not_masked():
    m = Masker(["", "ab", "abc"])
    assert m.mask("ab abc abcd") == "ab *** ***d"
    assert not Masker(["", "x"])
    assert Masker(["", "x"]).mask("x y") == "x y"


def test_the_longest_secret_wins_and_regex_characters_are_literal():
    m = Masker(["pass", "password+1", "a.b|c"])
    assert m.mask("password+1 pass axb|c a.b|c") == "*** *** axb|c ***"


def test_each_line_of_a_multiline_secret_is_masked():
    key = "-----BEGIN KEY-----\nMIIEabc\nxyz123==\n-----END KEY-----\n"
    m = Masker([key])
    assert m.mask("MIIEabc\n") == "***\n"
    assert m.mask(key) == "***"


def test_repr_does_not_show_secrets():
    assert "hunter2" not in repr(Masker(["hunter2"]))


def test_secret_values_picks_names_that_look_secret():
    args = {
        "DB_PASSWORD": "pw1",
        "github_token": "tok1",
        "Client_Secret": "sec1",
        "API_KEY": "key1",
        "SSH_KEYS": "key2",
        "NODE_ENV": "production",
        "EMPTY_TOKEN": "",
        "DUP_TOKEN": "tok1",
    }
    assert secret_values(args, ["regpass", "pw1"]) == ["pw1", "tok1", "sec1", "key1", "key2", "regpass"]
    assert secret_values({}) == []
