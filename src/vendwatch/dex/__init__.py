"""EVA-DTS (DEX/UCS) audit reads: parse (pure), compare reads, turn a read into log events."""
