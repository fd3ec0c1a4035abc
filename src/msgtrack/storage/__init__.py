"""The database layer: schema, migrations, connections, and one module of SQL per store.

Stores: ``recipients`` (profiles, quarantine, opt-outs), ``deliveries`` (deliveries,
tracked URLs, messages), ``tracking`` (tracking logs, visitors, aggregates, checkpoints).
Handlers never write SQL themselves; they call the named functions of these modules.
"""
