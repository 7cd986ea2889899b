"""Build hook: ships the top-level presets/*.json inside the wheel as
keras_siglip2/preset_data/ (source checkouts read presets/ directly)."""

import glob
import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithPresets(build_py):
    def run(self):
        super().run()
        target = os.path.join(self.build_lib, "keras_siglip2", "preset_data")
        os.makedirs(target, exist_ok=True)
        for path in sorted(glob.glob(os.path.join("presets", "*.json"))):
            shutil.copy(path, target)


setup(cmdclass={"build_py": BuildPyWithPresets})
