"""The example plugin passes facedefense's shipped defender contract."""

from facedefense.testing.contracts import DefenderContract
from facedefense_example_plugin.sign_noise import SignNoise

pytest_plugins = ["facedefense.testing.fixtures"]


class TestSignNoise(DefenderContract):
    def make_method(self, request):
        return SignNoise(eps=self.eps, device="cpu")
