package backend

import (
	"errors"
	"fmt"
	"time"

	"github.com/ecowatt/ecowatt/backend/keyvault"
	"github.com/ecowatt/ecowatt/backend/store"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"
)

// Accounts are the broker's accounts, read from Redis: devices (their
// sealed PSKs, opened with the vault, and the keys derived from them) and
// operators (bcrypt hashes and roles). It is the part of the backend that
// the broker needs to let anyone in, so it is built first and needs no
// broker: cmd/ecowatt builds Accounts, hands them to the broker, and then
// builds the Service on that broker with the same Accounts
// (Config.Accounts). Methods: DeviceKeys (registry.go), DeviceAccess
// (lifecycle.go), EnsureOperator,
// AuthenticateOperator and OperatorRole (operators.go). A Service embeds
// its Accounts, so they are its methods too.
type Accounts struct {
	rdb        redis.UniversalClient
	keys       store.Keys
	vault      *keyvault.Vault
	log        zerolog.Logger
	now        func() time.Time
	bcryptCost int
	cache      *keyCache
	verified   verifiedPasswords

	passwordChecks prometheus.Counter // bcrypt comparisons of operator passwords
}

// AccountsConfig holds the dependencies of Accounts. Redis and Vault are
// required.
type AccountsConfig struct {
	Redis        redis.UniversalClient
	Prefix       string // key prefix; default store.DefaultPrefix
	Vault        *keyvault.Vault
	Logger       zerolog.Logger
	Now          func() time.Time      // default time.Now
	Registerer   prometheus.Registerer // default: a private registry
	KeyCacheSize int                   // derived keys kept in memory; default 65536
	KeyCacheTTL  time.Duration         // default 5 minutes, so a key changed by another replica is picked up
	BcryptCost   int                   // default bcrypt.DefaultCost
}

// NewAccounts checks cfg and builds Accounts. It registers
// ecowatt_operator_password_checks_total with cfg.Registerer.
func NewAccounts(cfg AccountsConfig) (*Accounts, error) {
	if cfg.Redis == nil || cfg.Vault == nil {
		return nil, errors.New("new accounts: Redis and Vault are required")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = store.DefaultPrefix
	}
	keys, err := store.NewKeys(cfg.Prefix)
	if err != nil {
		return nil, fmt.Errorf("new accounts: %w", err)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	if cfg.KeyCacheSize <= 0 {
		cfg.KeyCacheSize = 65536
	}
	if cfg.KeyCacheTTL <= 0 {
		cfg.KeyCacheTTL = 5 * time.Minute
	}
	if cfg.BcryptCost == 0 {
		cfg.BcryptCost = bcrypt.DefaultCost
	}
	a := &Accounts{
		rdb:        cfg.Redis,
		keys:       keys,
		vault:      cfg.Vault,
		log:        cfg.Logger.With().Str("component", "backend").Logger(),
		now:        cfg.Now,
		bcryptCost: cfg.BcryptCost,
		cache:      newKeyCache(cfg.KeyCacheSize, cfg.KeyCacheTTL),
		passwordChecks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ecowatt_operator_password_checks_total",
			Help: "Operator passwords checked with bcrypt (unknown names and cached logins cost none).",
		}),
	}
	if err := cfg.Registerer.Register(a.passwordChecks); err != nil {
		return nil, fmt.Errorf("new accounts: %w", err)
	}
	return a, nil
}

// accountsOf returns cfg.Accounts, or builds them from cfg's Redis, Prefix,
// Vault and key and password settings; setting both is an error (which
// would the Service use?).
func accountsOf(cfg Config) (*Accounts, error) {
	if cfg.Accounts == nil {
		return NewAccounts(AccountsConfig{
			Redis: cfg.Redis, Prefix: cfg.Prefix, Vault: cfg.Vault,
			Logger: cfg.Logger, Now: cfg.Now, Registerer: cfg.Registerer,
			KeyCacheSize: cfg.KeyCacheSize, KeyCacheTTL: cfg.KeyCacheTTL, BcryptCost: cfg.BcryptCost,
		})
	}
	if cfg.Redis != nil || cfg.Vault != nil || cfg.Prefix != "" || cfg.KeyCacheSize != 0 || cfg.KeyCacheTTL != 0 || cfg.BcryptCost != 0 {
		return nil, errors.New("set Accounts or Redis, Prefix, Vault, KeyCache* and BcryptCost, not both")
	}
	return cfg.Accounts, nil
}
