"""An HTTP push bridge built on the mautrix Python framework's AppService, unchanged,
pointed at asmux as its homeserver.

Usage: push_bridge.py REGISTRATION.json PORT ASMUX_URL EVENTS_FILE

It appends every event it receives to EVENTS_FILE (one JSON object a line), to-device
events included (as {"to_device": EVENT}). When its
bot is invited it joins and greets the room, and at start it pings itself (MSC2659)
through asmux and prints the outcome. When someone writes "!ghost" it brings one of its
ghosts into the room to speak, tries the same with another bridge's ghost, and prints
what the homeserver side answered. "!room" makes its bot create a room with the writer
invited, and prints the room ID.
"""

import asyncio
import json
import sys

from mautrix.appservice import AppService
from mautrix.errors import MatrixRequestError
from mautrix.types import EventType, Membership


async def main() -> None:
    registration = json.load(open(sys.argv[1]))
    port, server, events_file = int(sys.argv[2]), sys.argv[3], sys.argv[4]
    appservice = AppService(
        server=server,
        domain="example.test",
        as_token=registration["as_token"],
        hs_token=registration["hs_token"],
        bot_localpart=registration["sender_localpart"],
        id=registration["id"],
        ephemeral_events=True,
        encryption_events=True,
    )
    received = open(events_file, "a")

    @appservice.matrix_event_handler
    async def handle(event) -> None:
        # Content objects serialise themselves; anything else as text.
        def plain(value):
            return value.serialize() if hasattr(value, "serialize") else str(value)

        received.write(json.dumps(event.serialize(), default=plain) + "\n")
        received.flush()
        if (
            event.type == EventType.ROOM_MEMBER
            and event.state_key == appservice.bot_mxid
            and event.content.membership == Membership.INVITE
        ):
            await appservice.intent.join_room(event.room_id)
            await appservice.intent.send_text(event.room_id, "hello from the python bridge")
        elif event.type == EventType.ROOM_MESSAGE and event.content.body == "!ghost":
            ghost = appservice.intent.user("@_alice_signal_4915:example.test")
            await ghost.ensure_registered()
            await appservice.intent.invite_user(event.room_id, ghost.mxid)
            await ghost.join_room(event.room_id)
            await ghost.send_text(event.room_id, "a ghost speaks")
            foreign = appservice.intent.user("@_alice_whatsapp_4915:example.test")
            try:
                await foreign.ensure_registered()
                print("FOREIGN ALLOWED", flush=True)
            except MatrixRequestError as error:
                print(f"FOREIGN REFUSED {error.errcode}", flush=True)
        elif event.type == EventType.ROOM_MESSAGE and event.content.body == "!room":
            room_id = await appservice.intent.create_room(invitees=[event.sender])
            print(f"ROOM {room_id}", flush=True)

    async def handle_to_device(event) -> None:
        received.write(json.dumps({"to_device": event.serialize()}) + "\n")
        received.flush()

    appservice.to_device_handler = handle_to_device

    await appservice.start(host="127.0.0.1", port=port)
    try:
        duration = await appservice.ping_self()
        print(f"PING OK {duration}", flush=True)
    except Exception as error:  # the test reads the outcome from stdout
        print(f"PING FAILED {error!r}", flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
