"""The example plugin passes facedefense's shipped defender contract."""

from facedefense_example_plugin.sign_noise import SignNoise

from facedefense.testing.contracts import DefenderContract

pytest_plugins = ["facedefense.testing.fixtures"]


class TestSignNoise(DefenderContract):
    def make_method(self, request):
        return SignNoise(eps=self.eps, device="cpu")
