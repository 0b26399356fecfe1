"""PC/SC contactless card reader (campus and admission cards) through pcscd.

``monitor`` keeps a pcscd context and follows one reader on it, through pcscd
restarts and unplugged readers; ``reader`` reads the card placed on that reader
(its UID, and application data by APDU); ``sim`` acts taps out with no pcscd.
"""
from examroom.drivers.pcsc.monitor import PCSCD_AWAY, READER_MUTE
from examroom.drivers.pcsc.reader import PcscReader
from examroom.drivers.pcsc.sim import SIM_ATR, SimPcscReader

__all__ = ["PCSCD_AWAY", "READER_MUTE", "SIM_ATR", "PcscReader", "SimPcscReader"]
