//! Fragmented messages over loopback TCP: sending `Message::Fragment`
//! pieces, receiving them whole or, in fragment mode, piece by piece.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::{default_pair, next_msg, within};
use ferrows::proto::EncodeError;
use ferrows::{Bytes, Error, Fragment, Message, OpCode, WebSocket};

/// One piece of a message: only `opcode`, `data` and `fin` matter when
/// sending.
fn piece(opcode: OpCode, data: impl Into<Bytes>, fin: bool) -> Message {
    Message::Fragment(Fragment {
        opcode,
        data: data.into(),
        message_offset: 0,
        first: false,
        fin,
    })
}

/// Sends `bytes` as a `opcode` message cut at `cuts` (byte offsets).
async fn send_in_pieces<S>(ws: &mut WebSocket<S>, opcode: OpCode, bytes: &[u8], cuts: &[usize])
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let bytes = Bytes::copy_from_slice(bytes);
    let mut bounds = vec![0];
    bounds.extend_from_slice(cuts);
    bounds.push(bytes.len());
    for (i, w) in bounds.windows(2).enumerate() {
        let fin = i == bounds.len() - 2;
        ws.send(piece(opcode, bytes.slice(w[0]..w[1]), fin))
            .await
            .unwrap();
    }
}

fn fragment(msg: Message) -> Fragment {
    match msg {
        Message::Fragment(f) => f,
        other => panic!("expected a fragment, got {other:?}"),
    }
}

#[tokio::test]
async fn text_cut_inside_characters_arrives_as_one_message() {
    let (mut server, mut client) = default_pair().await;
    let text = "héllo wörld € 😀!";
    let bytes = text.as_bytes();
    // Cut inside 'é' (2 bytes), '€' (3 bytes) and '😀' (4 bytes, twice).
    let e = text.find('é').unwrap() + 1;
    let euro = text.find('€').unwrap() + 2;
    let smile = text.find('😀').unwrap();
    let cuts = [e, euro, smile + 1, smile + 3];
    for cut in cuts {
        assert!(!text.is_char_boundary(cut), "{cut} is inside a character");
    }
    send_in_pieces(&mut client, OpCode::Text, bytes, &cuts).await;
    assert_eq!(next_msg(&mut server).await.as_text(), Some(text));

    // Every cut position of a shorter text.
    let text = "a€😀é";
    for cut in 1..text.len() {
        send_in_pieces(&mut client, OpCode::Text, text.as_bytes(), &[cut]).await;
        assert_eq!(
            next_msg(&mut server).await.as_text(),
            Some(text),
            "cut {cut}"
        );
    }
}

#[tokio::test]
async fn binary_in_many_pieces_with_empty_ones_and_pings_between() {
    let (mut server, mut client) = default_pair().await;
    let data: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let data = Bytes::from(data);
    client
        .send(piece(OpCode::Binary, data.slice(..0), false))
        .await
        .unwrap();
    client
        .send(piece(OpCode::Binary, data.slice(..1000), false))
        .await
        .unwrap();
    // Control frames may be sent between the pieces of a message.
    client.send(Message::ping("between")).await.unwrap();
    client
        .send(piece(OpCode::Binary, data.slice(1000..1000), false))
        .await
        .unwrap();
    client
        .send(piece(OpCode::Binary, data.slice(1000..), true))
        .await
        .unwrap();
    // The ping is delivered as it arrives, the message when complete.
    assert_eq!(next_msg(&mut server).await, Message::ping("between"));
    assert_eq!(next_msg(&mut server).await, Message::Binary(data));
    // The pong went out in the meantime.
    server.flush().await.unwrap();
    assert_eq!(next_msg(&mut client).await, Message::pong("between"));
}

#[tokio::test]
async fn fragment_misuse_is_refused_locally() {
    let (mut server, mut client) = default_pair().await;
    client
        .send(piece(OpCode::Text, "first ", false))
        .await
        .unwrap();
    // A whole message cannot interrupt a fragmented one.
    let err = client.send("whole").await.unwrap_err();
    assert!(
        matches!(err, Error::Send(EncodeError::FragmentInProgress)),
        "{err:?}"
    );
    // Pieces are Text or Binary (continuation frames are implied).
    let err = client
        .send(piece(OpCode::Continuation, "x", true))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Send(EncodeError::NotADataOpcode(OpCode::Continuation))
        ),
        "{err:?}"
    );
    let err = client
        .send(piece(OpCode::Ping, "x", true))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Send(EncodeError::NotADataOpcode(OpCode::Ping))),
        "{err:?}"
    );
    // Nothing of that went out: the message finishes normally.
    client
        .send(piece(OpCode::Text, "last", true))
        .await
        .unwrap();
    assert_eq!(next_msg(&mut server).await.as_text(), Some("first last"));
    client.send("whole").await.unwrap();
    assert_eq!(next_msg(&mut server).await.as_text(), Some("whole"));
}

#[tokio::test]
async fn fragment_mode_delivers_pieces_with_offsets() {
    let (mut server, mut client) = default_pair().await;
    server.set_fragment_mode(true);

    send_in_pieces(&mut client, OpCode::Binary, b"abcdefgh", &[3, 3]).await;
    let f = fragment(next_msg(&mut server).await);
    assert_eq!(
        (f.opcode, &f.data[..], f.message_offset, f.first, f.fin),
        (OpCode::Binary, &b"abc"[..], 0, true, false)
    );
    let f = fragment(next_msg(&mut server).await);
    assert_eq!(
        (&f.data[..], f.message_offset, f.first, f.fin),
        (&b""[..], 3, false, false)
    );
    let f = fragment(next_msg(&mut server).await);
    assert_eq!(
        (&f.data[..], f.message_offset, f.first, f.fin),
        (&b"defgh"[..], 3, false, true)
    );

    // A single-frame message is one fragment, first and last.
    client.send("one frame").await.unwrap();
    let f = fragment(next_msg(&mut server).await);
    assert_eq!(
        (f.opcode, &f.data[..], f.message_offset, f.first, f.fin),
        (OpCode::Text, &b"one frame"[..], 0, true, true)
    );

    // Text cut inside a character: the pieces are raw bytes; together they
    // are the text.
    let text = "€uro 😀";
    send_in_pieces(&mut client, OpCode::Text, text.as_bytes(), &[1, 6]).await;
    let mut assembled = Vec::new();
    for expected_first in [true, false, false] {
        let f = fragment(next_msg(&mut server).await);
        assert_eq!(f.opcode, OpCode::Text);
        assert_eq!(f.first, expected_first);
        assert_eq!(f.message_offset, assembled.len() as u64);
        assembled.extend_from_slice(&f.data);
        assert_eq!(f.fin, assembled.len() == text.len());
    }
    assert_eq!(assembled, text.as_bytes());
}

#[tokio::test]
async fn fragment_mode_changes_at_message_boundaries() {
    let (mut server, mut client) = default_pair().await;
    client.send(piece(OpCode::Text, "ab", false)).await.unwrap();
    client.send(Message::ping("mid")).await.unwrap();
    client.send(piece(OpCode::Text, "cd", true)).await.unwrap();
    client.send("next").await.unwrap();
    send_in_pieces(&mut client, OpCode::Binary, b"whole again", &[5]).await;

    // Whole-message mode; the ping arrives mid-message.
    assert_eq!(next_msg(&mut server).await, Message::ping("mid"));
    // Switching now does not split the message already under way...
    server.set_fragment_mode(true);
    assert_eq!(next_msg(&mut server).await.as_text(), Some("abcd"));
    // ...but applies from the next one.
    let f = fragment(next_msg(&mut server).await);
    assert_eq!((&f.data[..], f.first, f.fin), (&b"next"[..], true, true));
    server.set_fragment_mode(false);
    assert_eq!(
        next_msg(&mut server).await,
        Message::binary(&b"whole again"[..])
    );
}

#[tokio::test]
async fn a_client_in_fragment_mode_receives_server_pieces() {
    let (mut server, mut client) = default_pair().await;
    client.set_fragment_mode(true);
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    send_in_pieces(&mut server, OpCode::Binary, &data, &[65_536, 131_072]).await;
    let mut assembled = Vec::new();
    let mut count = 0;
    loop {
        let f = fragment(next_msg(&mut client).await);
        assert_eq!(f.message_offset, assembled.len() as u64);
        assert_eq!(f.first, count == 0);
        assembled.extend_from_slice(&f.data);
        count += 1;
        if f.fin {
            break;
        }
    }
    assert_eq!(count, 3);
    assert_eq!(assembled, data);
    // The next message starts at offset 0 again.
    server.send("again").await.unwrap();
    let f = fragment(next_msg(&mut client).await);
    assert_eq!((f.message_offset, f.first, f.fin), (0, true, true));
    within("close", async {
        let (closed, _) = tokio::join!(client.close(1000, ""), server.recv());
        closed
    })
    .await
    .unwrap();
}
