// Package tlsconfig builds the mutual-TLS configurations Strait uses for
// HBONE, on top of go-spiffe's spiffetls/tlsconfig verification hooks.
//
// Both [Client] and [Server] configurations:
//
//   - speak TLS 1.3 only (MinVersion = MaxVersion = TLS 1.3);
//   - accept only the AES-GCM suites TLS_AES_128_GCM_SHA256 and
//     TLS_AES_256_GCM_SHA384. Go does not let TLS 1.3 suites be configured,
//     so VerifyConnection refuses a handshake that negotiated anything else
//     (i.e. TLS_CHACHA20_POLY1305_SHA256). Go orders AES-GCM first when the
//     CPU has AES hardware (AES-NI, ARMv8 AES), which is the case on every
//     platform we ship; a peer that insists on ChaCha20 is refused with
//     [ErrCipherSuite];
//   - negotiate ALPN "h2" by default ([WithALPN] changes it, e.g. "h3" for
//     QUIC) and refuse a handshake that negotiated no listed protocol;
//   - disable session tickets (SessionTicketsDisabled, no ClientSessionCache)
//     so every connection is a full handshake with fresh verification;
//   - present an X.509 SVID obtained from a source on every handshake, so a
//     certificate manager can rotate certificates without rebuilding
//     configurations ([WithSVIDFunc] passes the handshake context).
//
// The client sends no SNI (ServerName is empty) and does not verify host
// names: it verifies the server's chain against the bundle and requires the
// server's SPIFFE ID to be one of an explicit, non-empty expected set. The
// server requires a client certificate chaining to the bundle whose SPIFFE
// ID is in its trust domain.
//
// [PeerID] returns the verified SPIFFE ID of the peer of a completed
// handshake.
package tlsconfig
