package broker

import (
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// A CONNECT's authentication (the device key lookup in Redis, the key
// vault's decrypt) and its presence write run on a few connect workers,
// not on the connection's read goroutine. That goroutine lives as long as
// the connection, and the stack a deep call grows stays with it until
// garbage collections shrink it back, a halving each, while the fleet is
// idle and collections are rare (issue 14: 48 KiB of stack per device
// after a bring-up of 3,000, against the 20 KiB the parked goroutines
// need; docs/BENCHMARKS.md). The workers keep their grown stacks instead,
// a fixed cost, and exit when idle.

// connectWorkersMax bounds the workers, and so the CONNECTs whose lookups
// run at once; beyond it a CONNECT waits for a free worker. A lookup is a
// Redis round trip or two, so this many keep Redis busy.
const connectWorkersMax = 32

// connectWorkerIdle is how long an idle worker waits for work before it
// exits.
const connectWorkerIdle = 2 * time.Second

type connectWork struct {
	jobs chan func()   // unbuffered: a send succeeds only into an idle worker
	quit chan struct{} // closed by stop

	mu      sync.Mutex // guards n, stopped
	n       int        // workers running
	stopped bool
	wg      sync.WaitGroup
}

func newConnectWork() *connectWork {
	return &connectWork{jobs: make(chan func()), quit: make(chan struct{})}
}

// run runs f on a worker and returns when it is done. After stop it runs
// f on the caller.
func (w *connectWork) run(f func()) {
	done := make(chan struct{})
	job := func() { defer close(done); f() }
	for !w.hand(job) {
	}
	<-done
}

// hand gives job to an idle worker, or to a new one below the bound, or
// waits a little for one to come free; it reports whether job was taken.
// The wait is bounded because the workers it waits for may all be
// exiting idle at that moment.
func (w *connectWork) hand(job func()) bool {
	select {
	case w.jobs <- job:
		return true
	default:
	}
	w.mu.Lock()
	switch {
	case w.stopped:
		w.mu.Unlock()
		job()
		return true
	case w.n < connectWorkersMax:
		w.n++
		w.wg.Add(1)
		w.mu.Unlock()
		go w.worker(job)
		return true
	}
	w.mu.Unlock()
	t := time.NewTimer(50 * time.Millisecond)
	defer t.Stop()
	select {
	case w.jobs <- job:
		return true
	case <-w.quit:
		job()
		return true
	case <-t.C:
		return false
	}
}

func (w *connectWork) worker(job func()) {
	defer w.wg.Done()
	idle := time.NewTimer(connectWorkerIdle)
	defer idle.Stop()
	for {
		job()
		idle.Reset(connectWorkerIdle)
		select {
		case job = <-w.jobs:
			continue
		case <-idle.C:
		case <-w.quit:
		}
		w.mu.Lock()
		w.n--
		w.mu.Unlock()
		return
	}
}

// stop makes the workers exit and waits for them.
func (w *connectWork) stop() {
	w.mu.Lock()
	if !w.stopped {
		w.stopped = true
		close(w.quit)
	}
	w.mu.Unlock()
	w.wg.Wait()
}

// authenticateOffStack is authenticate on a connect worker.
func (s *Server) authenticateOffStack(cl *mqtt.Client, pk packets.Packet) (id *identity, rej *Rejection, code packets.Code) {
	s.connectWork.run(func() { id, rej, code = s.authenticate(cl, pk) })
	return id, rej, code
}

// connectedOffStack is connected on a connect worker.
func (s *Server) connectedOffStack(id *identity) (err error) {
	s.connectWork.run(func() { err = s.connected(id) })
	return err
}
