"""`cli_lightning_logo`: the banner Lightning's example scripts print first (`from lightning.pytorch import
cli_lightning_logo`); this one is loops' own."""

LOGO = r"""
  _
 | |  ___   ___  _ __   ___
 | | / _ \ / _ \| '_ \ / __|
 | || (_) | (_) | |_) |\__ \
 |_| \___/ \___/| .__/ |___/
                |_|  the Trainer on fabric_kit
"""


def cli_lightning_logo() -> None:
    """Print the loops banner between blank lines."""
    print()
    print(LOGO)
    print()
