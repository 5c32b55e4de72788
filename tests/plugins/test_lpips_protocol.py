"""The benchmark protocol's ``lpips_net`` reaches the LPIPS metric (AlexNet by default, VGG where a
protocol says so, as FaceLock's evaluation), unless the metric's entry sets its own."""

from __future__ import annotations

import pytest

from facedefense.benchmark import load_config
from facedefense.benchmark.graph import plan
from facedefense.testing.benchmark_inputs import write_identities

CONFIG = """\
protocol: {{profile: anti_dreambooth{extra}}}
model: {model}
identities: [faces]
defenders: [none]
attacks:
  - editor: sdedit
    instructions: ["a painting of a person"]
metrics: [{metric}]
"""


@pytest.mark.parametrize(
    ("extra", "metric", "net"),
    [
        ("", "lpips", "alex"),
        (", lpips_net: vgg", "lpips", "vgg"),
        (", lpips_net: vgg", "{name: lpips, options: {net: squeeze}}", "squeeze"),  # the entry's own wins
    ],
)
def test_protocol_lpips_net_reaches_the_metric(tmp_path, extra, metric, net):
    write_identities(tmp_path / "faces", identities=1, per_set=1, size=32)
    text = CONFIG.format(extra=extra, model="unused/model-id", metric=metric)
    (tmp_path / "bench.yaml").write_text(text, encoding="utf-8")
    config = load_config(tmp_path / "bench.yaml")
    _, _, described = plan(config)
    assert described["metric:lpips"]["config"]["net"] == net
    assert config.protocol.to_dict()["lpips_net"] == ("alex" if not extra else "vgg")
