"""The pure OCPP-J protocol core: strings in, decisions, events and frames out.

Nothing here touches a socket or the database. ``framing`` parses and builds RPC
frames, ``validation`` checks payloads against the official JSON schemas shipped
in the ``ocpp`` package (compiled once per schema), ``errors`` holds the wire error
codes per version, ``normalise`` turns meter values into SI samples, and the
``handlers_*`` modules decide the answer and the events for each charger message.
"""
