package main

import (
	"flag"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/ecowatt/ecowatt/backend"
	commandsvc "github.com/ecowatt/ecowatt/backend/commands"
	"github.com/ecowatt/ecowatt/backend/store"
)

// commandConfig are serve's flags for the command service.
type commandConfig struct {
	sweep, resultTimeout, resendAfter, resultResend time.Duration
	lease, tick                                     time.Duration
}

func (c *commandConfig) register(fs *flag.FlagSet) {
	fs.DurationVar(&c.sweep, "command-sweep", commandsvc.DefaultSweepInterval, "how often queued, expired and timed-out commands are looked for")
	fs.DurationVar(&c.resultTimeout, "command-result-timeout", commandsvc.DefaultResultTimeout, "a delivered command without a result after this is timed_out")
	fs.DurationVar(&c.resendAfter, "command-resend-after", commandsvc.DefaultResendAfter, "a sent command without a device receipt after this is sent again")
	fs.DurationVar(&c.resultResend, "command-result-resend", 0, "a delivered command without a result after this is sent again; the device answers from flash (default: half of --command-result-timeout)")
	fs.DurationVar(&c.lease, "command-lease", 0, "lifetime of the Redis leases that make one replica deliver commands and one sweep them (default: the larger of 15s and 3 --command-sweep)")
	fs.DurationVar(&c.tick, "command-tick", commandsvc.DefaultDeliveryTick, "how often the delivering replica picks up commands queued on other replicas")
}

// newCommands builds the command service on svc and attaches its handlers.
func newCommands(c commandConfig, rdb redis.UniversalClient, keys store.Keys, replica string, svc *backend.Service, log zerolog.Logger, reg prometheus.Registerer) (*commandsvc.Service, error) {
	cmds, err := commandsvc.New(commandsvc.Config{
		Redis: rdb, Keys: keys, Fleet: svc, Registerer: reg,
		Logger:        log,
		SweepInterval: c.sweep, ResultTimeout: c.resultTimeout, ResendAfter: c.resendAfter,
		ResultResend: c.resultResend, Replica: replica, LeaseTTL: c.lease, DeliveryTick: c.tick,
	})
	if err != nil {
		return nil, err
	}
	cmds.Attach()
	return cmds, nil
}
