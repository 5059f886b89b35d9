"""The Participant Service rules engine: machine definitions, validation and decisions."""
