"""The pure model: definitions, attribute checks, the state machine per type, decide(),
failures and the event envelope. No I/O."""
