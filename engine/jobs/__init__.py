"""Background work: the dispatcher that delivers the outbox, state timers and batch items."""
