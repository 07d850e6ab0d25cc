"""Secrets stay on the machine: a password typed on the command line or set in the environment
appears in no log line, MLflow param, tag or artifact, Hydra output file, sweep file, params.yaml
or command line of a process the sweep starts."""

from __future__ import annotations

import pytest

from tunelab.config.secrets import mask, mask_diff


@pytest.mark.parametrize(
    ("text", "want"),
    [
        (
            "postgresql://u@db/optuna?password=S3cr3t&sslmode=require",
            "postgresql://u@db/optuna?password=***&sslmode=require",
        ),
        (
            "mysql+pymysql://u@h/d?charset=utf8&PWD=S3cr3t#x",
            "mysql+pymysql://u@h/d?charset=utf8&PWD=***#x",
        ),
        ("http://h:5000/?Token=S3cr3t", "http://h:5000/?Token=***"),
        ("x https://h/?passwd=S3cr3t&secret=S3cr3t y", "x https://h/?passwd=***&secret=*** y"),
        ("postgresql://u:S3cr3t@h/d?sslpassword=S3cr3t", "postgresql://u:***@h/d?sslpassword=***"),
        (
            "storage: 'postgresql://u@h/d?password=S3cr3t'",
            "storage: 'postgresql://u@h/d?password=***'",
        ),
    ],
)
def test_mask_hides_passwords_in_url_queries(text, want):
    assert mask(text) == want
    assert "S3cr3t" not in mask(text)


def test_mask_leaves_text_without_secrets_alone():
    for text in (
        "journal:/tmp/optuna.journal",
        "sqlite:///a.db?mode=ro",
        "pwd is /tmp",
        "http://h/?tokens_seen=3",
        "a=1&b=2",
        "n_secret=3 secret=4",
    ):
        assert mask(text) == text


DIFF = """\
diff --git a/conf/local.py b/conf/local.py
--- a/conf/local.py
+++ b/conf/local.py
@@ -1,3 +1,6 @@
 keep = "postgresql://team:Committed1@db/optuna"
-password = "OldPass1"
+password = "S3cr3t"
+os.environ["PGPASSWORD"] = "S3cr3t"
+export PGPASSWORD=S3cr3t
+cfg = {"api_token": 'S3cr3t', "n_tokens": 3}
+uri = "postgresql://team:S3cr3t@db/optuna?sslpassword=S3cr3t"
+token_count = 3
"""


def test_a_diff_keeps_no_secret_of_its_added_lines_and_still_applies():
    out = mask_diff(DIFF)
    assert "S3cr3t" not in out
    added = [line for line in out.splitlines() if line.startswith("+") and "+++" not in line]
    assert added == [
        '+password = "***"',
        '+os.environ["PGPASSWORD"] = "***"',
        "+export PGPASSWORD=***",
        '+cfg = {"api_token": \'***\', "n_tokens": 3}',
        '+uri = "postgresql://team:***@db/optuna?sslpassword=***"',
        "+token_count = 3",
    ]
    # context and removed lines are left as committed, so the diff still applies to its commit
    assert ' keep = "postgresql://team:Committed1@db/optuna"' in out
    assert '-password = "OldPass1"' in out
