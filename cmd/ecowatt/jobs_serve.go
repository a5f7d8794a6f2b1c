package main

import (
	"flag"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/backend/commands"
	"github.com/ecowatt/ecowatt/backend/config"
	"github.com/ecowatt/ecowatt/backend/fota"
	"github.com/ecowatt/ecowatt/backend/jobs"
	"github.com/ecowatt/ecowatt/backend/store"
)

// jobConfig are serve's flags for the job engine.
type jobConfig struct {
	tick, lease time.Duration
}

func (c *jobConfig) register(fs *flag.FlagSet) {
	fs.DurationVar(&c.tick, "job-tick", jobs.DefaultTick, "how often the replica holding the jobs lease advances jobs (pacing granularity)")
	fs.DurationVar(&c.lease, "job-lease", jobs.DefaultLeaseTTL, "lifetime of the Redis lease that makes one replica advance jobs")
}

// newJobs builds the job engine over the config, command and FOTA services.
func newJobs(c jobConfig, rdb redis.UniversalClient, keys store.Keys, replica string, svc *backend.Service, bus jobs.Bus,
	cfgs *config.Service, cmds *commands.Service, fw *fota.Service, log zerolog.Logger, reg prometheus.Registerer) (*jobs.Service, error) {
	return jobs.New(jobs.Config{
		Redis: rdb, Keys: keys, Fleet: svc, Configs: cfgs, Commands: cmds, FOTA: fw, Rotations: svc, Bus: bus,
		Logger: log, Tick: c.tick, LeaseTTL: c.lease, Replica: replica, Registerer: reg,
	})
}
