"""End to end: the real `openai` Node SDK (installed from npm by this test's setup) through
HTTPS_PROXY, trusting the proxy's CA with NODE_EXTRA_CA_CERTS."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import CLIENT_KEY, KEY_ALPHA, _clean, ledger_row, proxy, ups
from tests.fakeupstream import FakeUpstream, Status
from tests.proxyproc import ProxyProcess

__all__ = ["_clean", "proxy", "ups"]
pytestmark = pytest.mark.e2e

SCRIPT = r"""
import OpenAI from "openai";
import { ProxyAgent } from "undici";
// Node 20's fetch ignores HTTPS_PROXY (Node >= 24 has NODE_USE_ENV_PROXY=1): use an agent.
const client = new OpenAI({
  apiKey: process.env.APP_KEY, baseURL: "https://api.openai.com/v1", maxRetries: 0,
  fetchOptions: { dispatcher: new ProxyAgent(process.env.HTTPS_PROXY) },
});
const headers = { "X-Orchestrator-Profile": "quality" };
const { data, response } = await client.chat.completions
  .create({ model: "gpt-4o", messages: [{ role: "user", content: "hi" }] }, { headers })
  .withResponse();
const stream = await client.chat.completions.create(
  { model: "gpt-4o", stream: true, messages: [{ role: "user", content: "hi" }] }, { headers });
let text = "";
for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? "";
console.log(JSON.stringify({
  model: data.model, content: data.choices[0].message.content, streamed: text,
  provider: response.headers.get("x-orchestrator-provider"),
  id: response.headers.get("x-orchestrator-request-id"),
}));
"""


@pytest.fixture(scope="session")
def node_sdk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if not (node and npm):
        if os.environ.get("CI") == "true":
            pytest.fail("node and npm are required in CI (the machine image ships them)")
        pytest.skip("node/npm not installed")
    d = tmp_path_factory.mktemp("node")
    out = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--silent", "openai", "undici"],
                         cwd=d, capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    (d / "chat.mjs").write_text(SCRIPT)
    yield d


def test_openai_node_sdk_through_the_proxy(node_sdk: Path, proxy: ProxyProcess,
                                           ups: dict[str, FakeUpstream]) -> None:  # fmt: skip
    ups["alpha"].fail(Status(503))  # and a fallback on the way
    env = {**os.environ, "HTTPS_PROXY": proxy.url, "NODE_EXTRA_CA_CERTS": str(proxy.ca_cert),
           "APP_KEY": CLIENT_KEY}  # fmt: skip
    out = subprocess.run(["node", "chat.mjs"], cwd=node_sdk, env=env, capture_output=True,
                         text=True, timeout=60, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["provider"] != "alpha" and got["content"] == f"Hello from {got['provider']}"
    assert got["streamed"] == "Hello from alpha"  # alpha is healthy again for the stream
    assert ledger_row(proxy, got["id"])["attempts"] == 2
    for f in ups.values():
        for s in f.requests():
            assert CLIENT_KEY not in json.dumps(s.headers)
    assert {s.headers["authorization"] for s in ups["alpha"].requests()} == {f"Bearer {KEY_ALPHA}"}
