package broker

import (
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// wsListener is a net.Listener of MQTT-over-WebSocket connections, served
// on a TCP listener the broker has already bound. mochi's own WebSocket
// listener binds inside Serve, so with ":0" nobody could learn its port
// (serve --ready-file reports it). mochi serves it like a TCP listener.
type wsListener struct {
	ln     net.Listener
	srv    *http.Server
	conns  chan net.Conn
	done   chan struct{} // closed by Close
	served chan struct{} // closed when srv.Serve returns
	once   sync.Once
}

func newWSListener(ln net.Listener) *wsListener {
	l := &wsListener{ln: ln, conns: make(chan net.Conn), done: make(chan struct{}), served: make(chan struct{})}
	up := &websocket.Upgrader{Subprotocols: []string{"mqtt"}, CheckOrigin: func(*http.Request) bool { return true }}
	l.srv = &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return // Upgrade has answered with an HTTP error
		}
		select {
		case l.conns <- &wsConn{Conn: c.UnderlyingConn(), c: c}:
		case <-l.done:
			_ = c.Close()
		}
	})}
	go func() {
		defer close(l.served)
		_ = l.srv.Serve(ln)
	}()
	return l
}

// Accept returns the next upgraded connection.
func (l *wsListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close stops accepting and waits for the HTTP server; established MQTT
// connections are mochi's to close. Safe to call twice.
func (l *wsListener) Close() error {
	l.once.Do(func() {
		close(l.done)
		_ = l.srv.Close()
		<-l.served
	})
	return nil
}

func (l *wsListener) Addr() net.Addr { return l.ln.Addr() }

// wsConn carries the MQTT byte stream in binary WebSocket messages (as
// mochi's listener does): a packet may span messages and a message packets.
type wsConn struct {
	net.Conn // the hijacked TCP connection: deadlines, addresses, Close
	c        *websocket.Conn
	r        io.Reader // the current message; nil between messages
}

func (w *wsConn) Read(p []byte) (int, error) {
	for {
		if w.r == nil {
			op, r, err := w.c.NextReader()
			if err != nil {
				return 0, err
			}
			if op != websocket.BinaryMessage {
				return 0, errors.New("websocket: message is not binary")
			}
			w.r = r
		}
		n, err := w.r.Read(p)
		if errors.Is(err, io.EOF) {
			w.r, err = nil, nil
			if n == 0 {
				continue
			}
		}
		return n, err
	}
}

func (w *wsConn) Write(p []byte) (int, error) {
	if err := w.c.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}
