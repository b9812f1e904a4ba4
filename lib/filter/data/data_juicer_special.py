"""Dump data-juicer's SPECIAL_CHARACTERS (data_juicer/ops/common/special_characters.py: ASCII
punctuation, digits and whitespace, its list of other symbols, every key of emoji.EMOJI_DATA) as the
single characters among them, one hex code point per line, into data_juicer_special_characters.txt
beside this file (os-filter's special_characters and word_repetition rules read it).

    python data_juicer_special.py   # in an environment with py-data-juicer (and its emoji) installed
"""

import importlib.util
import os
from importlib.metadata import version

# The module alone: importing data_juicer (or data_juicer.ops) would load every operator's dependencies.
package = importlib.util.find_spec("data_juicer").submodule_search_locations[0]
path = os.path.join(package, "ops", "common", "special_characters.py")
spec = importlib.util.spec_from_file_location("special_characters", path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
chars = sorted(c for c in module.SPECIAL_CHARACTERS if len(c) == 1)
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "data_juicer_special_characters.txt"), "w") as f:
    f.write(f"# data-juicer {version('py-data-juicer')}, emoji {version('emoji')}: {len(chars)} single characters of SPECIAL_CHARACTERS\n")
    f.writelines(f"{ord(c):X}\n" for c in chars)
