"""Second-generation ID card readers: the serial SAM reader, its frame codec and simulator."""
