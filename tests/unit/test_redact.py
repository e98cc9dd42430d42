"""enforce.redact: secrets out of what agentsh stores, and nothing else touched."""

from __future__ import annotations

import re
import time

import pytest

from agentsh.enforce.redact import TRIGGERS, is_secret_name, redact, redact_argv

GHP = "ghp_" + "A1b2C3d4E5" * 4  # 40 chars after the prefix
AKIA = "AKIAIOSFODNN7EXAMPLE"
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ."
    "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
PEM = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "-----END OPENSSH PRIVATE KEY-----"
)

# (text, expected) — the exact stored form.
REDACTED = [
    # provider token shapes, anywhere in the text
    (
        f"gh auth login --with-token <<< {GHP}",
        "gh auth login --with-token <<< [REDACTED:github_token]",
    ),
    ("github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuv", "[REDACTED:github_token]"),
    (f"echo {GHP.replace('ghp_', 'ghs_')}", "echo [REDACTED:github_token]"),
    ("sk-ant-api03-" + "x" * 40, "[REDACTED:anthropic_key]"),
    ("OPENAI=sk-proj-" + "Ab1_-" * 10, "OPENAI=[REDACTED:openai_key]"),
    ("sk-" + "a1B2" * 12, "[REDACTED:openai_key]"),
    ("key sk-abcdefghijT3BlbkFJabcdefghij here", "key [REDACTED:openai_key] here"),
    (
        f"aws configure set aws_access_key_id {AKIA}",
        "aws configure set aws_access_key_id [REDACTED:aws_access_key]",
    ),
    ("ASIAY34FZKBOKMUTVV7A", "[REDACTED:aws_access_key]"),
    ("xoxb-1234567890-abcdefghij", "[REDACTED:slack_token]"),
    ("glpat-abcdefghij0123456789", "[REDACTED:gitlab_token]"),
    ("AIzaSyA-1234567890abcdefghijklmnopqrstu", "[REDACTED:google_api_key]"),
    ("sk_live_" + "a" * 24, "[REDACTED:stripe_key]"),
    ("npm_" + "a1" * 18, "[REDACTED:npm_token]"),
    (f"Authorization: Bearer {JWT}", "Authorization: Bearer [REDACTED:jwt]"),
    (f"curl -H 'x: {JWT}'", "curl -H 'x: [REDACTED:jwt]'"),
    (f"cat > k <<EOF\n{PEM}\nEOF", "cat > k <<EOF\n[REDACTED:private_key]\nEOF"),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEow (truncated", "[REDACTED:private_key]"),
    # headers
    (
        "curl -H 'Authorization: Bearer abc.def-123' https://api.example.com",
        "curl -H 'Authorization: Bearer [REDACTED:authorization]' https://api.example.com",
    ),
    (
        "curl -H 'authorization:token abc123' x",
        "curl -H 'authorization:token [REDACTED:authorization]' x",
    ),
    ('curl -H "X-Api-Key: abc123" x', 'curl -H "X-Api-Key: [REDACTED:api_key]" x'),
    (
        "Proxy-Authorization: Basic dXNlcjpwYXNz",
        "Proxy-Authorization: Basic [REDACTED:authorization]",
    ),
    # user:password@ in URLs
    (
        "git clone https://alice:s3cret@github.com/o/r.git",
        "git clone https://alice:[REDACTED:url_password]@github.com/o/r.git",
    ),
    (
        "redis-cli -u redis://:pw123@localhost:6379",
        "redis-cli -u redis://:[REDACTED:url_password]@localhost:6379",
    ),
    (
        "DATABASE_URL=postgres://app:hunter2@db:5432/app",
        "DATABASE_URL=postgres://app:[REDACTED:url_password]@db:5432/app",
    ),
    # NAME=value assignments whose name says secret
    ("export GITHUB_TOKEN=abc123", "export GITHUB_TOKEN=[REDACTED:secret]"),
    (f"export GITHUB_TOKEN={GHP}", "export GITHUB_TOKEN=[REDACTED:github_token]"),
    (
        "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG aws s3 ls",
        "AWS_SECRET_ACCESS_KEY=[REDACTED:secret] aws s3 ls",
    ),
    ("MY_APP_SECRET_KEY='x y z' ./run", "MY_APP_SECRET_KEY='[REDACTED:secret]' ./run"),
    ('DB_PASSWORD="p a s s" psql', 'DB_PASSWORD="[REDACTED:secret]" psql'),
    ("PGPASSWORD=pw psql -h db", "PGPASSWORD=[REDACTED:secret] psql -h db"),
    ("MYSQL_PWD=pw mysql", "MYSQL_PWD=[REDACTED:secret] mysql"),
    ("password=hunter2", "password=[REDACTED:secret]"),
    (
        "curl 'https://x/cb?access_token=abc&state=1'",
        "curl 'https://x/cb?access_token=[REDACTED:secret]&state=1'",
    ),
    ("curl -d 'user=bob&password=pw' x", "curl -d 'user=bob&password=[REDACTED:secret]' x"),
    ("app --client-secret=abc", "app --client-secret=[REDACTED:secret]"),
    ("apiKey=abc123", "apiKey=[REDACTED:secret]"),
    ('{"password": "hunter2", "user": "x"}', '{"password": "[REDACTED:secret]", "user": "x"}'),
    ("{'api_key': 'k-123'}", "{'api_key': '[REDACTED:secret]'}"),
    ("db:\n  password: hunter2\n  user: app", "db:\n  password: [REDACTED:secret]\n  user: app"),
    # options whose value is the next word
    ("gh secret set X --token abc123", "gh secret set X --token [REDACTED:secret]"),
    ("vault login --password 'my pass'", "vault login --password '[REDACTED:secret]'"),
    ("mysql -u root -phunter2 app", "mysql -u root -p[REDACTED:password] app"),
    (
        "sudo /usr/bin/mysqldump -pX db > d.sql",
        "sudo /usr/bin/mysqldump -p[REDACTED:password] db > d.sql",
    ),
    ("sshpass -p hunter2 ssh host", "sshpass -p [REDACTED:password] ssh host"),
    ("curl -u alice:pw https://x", "curl -u alice:[REDACTED:password] https://x"),
    ("wget --user bob:pw http://x", "wget --user bob:[REDACTED:password] http://x"),
    (
        "openssl rsa -passin pass:hunter2 -in k",
        "openssl rsa -passin pass:[REDACTED:password] -in k",
    ),
    # several in one script, through ; && | and newlines
    (
        "cd app && export API_TOKEN=t1; mysql -pX\ncurl -u a:b x | jq .",
        "cd app && export API_TOKEN=[REDACTED:secret]; mysql -p[REDACTED:password]\n"
        "curl -u a:[REDACTED:password] x | jq .",
    ),
]

# Things that must come out unchanged.
UNTOUCHED = [
    "git status && pytest -q",
    "git checkout 3f786850e387550fdab836ed7e6dc881de23001b",
    "git log --oneline 3f78685..HEAD",
    "docker run --rm 123e4567-e89b-12d3-a456-426614174000",
    "ls -la /home/user/.config/tokens/ /etc/passwd",
    "grep -rn password src/ && grep -c token README.md",
    "pytest -k test_token_refresh tests/",
    "echo tokenizer=bert PWD=/home/x OLDPWD=/tmp",
    "PASSWORD_MIN_LENGTH=8 TOKEN_COUNT=3 SECRET_NAME=db --token-file=/run/t",
    "GITHUB_TOKEN_PATH=/run/token make",
    "docker login --password-stdin -u bob < pw.txt",
    "mysql -u root -p app",
    "mysql -h db -P 3306 -u app -p",
    "git clone git@github.com:org/repo.git",
    "curl http://localhost:8080/a@b",
    "curl https://example.com/path?q=1",
    "pip install scikit-learn; python -c 'import sklearn'",
    "echo sk-learn-tutorial-notebook-2024-final-version",
    "task-1234567890123456789012345 disk-usage-report-2024",
    "export PATH=$HOME/bin:$PATH",
    'PASSWORD="$DB_PASS" ./run && TOKEN=${GH_TOKEN} make',
    "PASSWORD=$(cat /run/secrets/pw) ./run",
    "echo $GITHUB_TOKEN | gh auth login --with-token",
    "make -j4 CFLAGS=-O2 max_tokens=100 PASS=2",
    "openssl rsa -passin env:KEY_PW -in k",
    "key: value\nmonkey: banana",
    "base64 -d <<< aGVsbG8gd29ybGQ=",
    "",
]


@pytest.mark.parametrize(("text", "expected"), REDACTED)
def test_redacts_secret(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize("text", UNTOUCHED)
def test_leaves_ordinary_text_alone(text: str) -> None:
    assert redact(text) == text


@pytest.mark.parametrize("text", [t for t, _ in REDACTED] + UNTOUCHED)
def test_idempotent(text: str) -> None:
    once = redact(text)
    assert redact(once) == once


@pytest.mark.parametrize(("text", "expected"), REDACTED)
def test_triggers_cover_every_redaction(text: str, expected: str) -> None:
    """The fast path skips text without a trigger: every redacted row must hold one."""
    assert any(t in text.lower() for t in TRIGGERS), text


def test_secret_value_never_survives() -> None:
    secrets = ["hunter2", "s3cret", GHP, AKIA, JWT, "wJalrXUtnFEMI/K7MDENG"]
    text = (
        f"mysql -phunter2; git clone https://u:s3cret@h/r; echo {GHP} {AKIA}; "
        f"curl -H 'Authorization: Bearer {JWT}'; AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG x"
    )
    out = redact(text)
    for s in secrets:
        assert s not in out
    assert len(re.findall(r"\[REDACTED:[a-z_]+\]", out)) == 6


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (("mysql", "-u", "root", "-phunter2"), ("mysql", "-u", "root", "-p[REDACTED:password]")),
        (("mysql", "-p", "app"), ("mysql", "-p", "app")),
        (("gh", "auth", "--token", "abc"), ("gh", "auth", "--token", "[REDACTED:secret]")),
        (("app", "--password", "a b c"), ("app", "--password", "[REDACTED:secret]")),
        (("app", "--password", "-x"), ("app", "--password", "-x")),
        (("app", "--password-stdin", "user"), ("app", "--password-stdin", "user")),
        (("curl", "-u", "me:pw", "http://x"), ("curl", "-u", "me:[REDACTED:password]", "http://x")),
        (("sshpass", "-p", "pw", "ssh", "h"), ("sshpass", "-p", "[REDACTED:password]", "ssh", "h")),
        (("ssh", "-p", "2222", "h"), ("ssh", "-p", "2222", "h")),
        (("env", f"GH_TOKEN={GHP}", "gh"), ("env", "GH_TOKEN=[REDACTED:github_token]", "gh")),
        (
            ("bash", "-c", "export API_KEY=abc; make deploy"),
            ("bash", "-c", "export API_KEY=[REDACTED:secret]; make deploy"),
        ),
        (
            ("git", "commit", "-m", "fix token refresh"),
            ("git", "commit", "-m", "fix token refresh"),
        ),
        ((), ()),
    ],
)
def test_redact_argv(argv: tuple[str, ...], expected: tuple[str, ...]) -> None:
    assert redact_argv(argv) == expected
    assert redact_argv(list(argv)) == expected


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("GITHUB_TOKEN", True),
        ("db_password", True),
        ("apiKey", True),
        ("--client-secret", True),
        ("PGPASSWORD", True),
        ("AWS_SECRET_ACCESS_KEY", True),
        ("private_key", True),
        ("MYSQL_PWD", True),
        ("tokenizer", False),
        ("PWD", False),
        ("PASSWORD_MIN_LENGTH", False),
        ("--token-file", False),
        ("--password-stdin", False),
        ("AWS_ACCESS_KEY_ID", False),  # an id, not a secret; its AKIA value is caught by shape
        ("keyboard", False),
        ("max_tokens", False),
    ],
)
def test_is_secret_name(name: str, secret: bool) -> None:
    assert is_secret_name(name) is secret


def test_undecodable_bytes_survive() -> None:
    text = "cat caf\udce9 && TOKEN=abc"
    assert redact(text) == "cat caf\udce9 && TOKEN=[REDACTED:secret]"


@pytest.mark.parametrize(
    "text",
    [
        "token " + "a-" * 50_000,  # a name that never meets "="
        "secret." * 15_000,  # a URL scheme that never meets "://"
        "eyJ" * 33_000,  # a JWT start that never completes
        "glpat-" * 16_000,
        "xoxb-" * 20_000,
        "key:\n" * 25_000,
        "--token " * 12_000,
    ],
    ids=["name", "scheme", "jwt", "gitlab", "slack", "yaml", "flags"],
)
def test_linear_time_on_hostile_input(text: str) -> None:
    """~100 KB of near-misses: a quadratic pattern takes tens of seconds here (measured:
    7 s for 40 KB before the patterns were anchored); linear ones well under 1 s."""
    started = time.perf_counter()
    redact(text)
    assert time.perf_counter() - started < 2.0
