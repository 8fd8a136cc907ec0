module github.com/neffos-contrib/scaleout/prometheus

go 1.26.0

// Built against the scaleout module of the same commit. Before tagging a
// release of this module, require a tagged scaleout version that has
// Options.Observer and Exchange.Ready (the replace is ignored by users).
replace github.com/neffos-contrib/scaleout => ../

require (
	github.com/kataras/neffos v0.0.24
	github.com/neffos-contrib/scaleout v0.0.0-00010101000000-000000000000
	github.com/prometheus/client_golang v1.23.2
	github.com/prometheus/client_model v0.6.2
	github.com/prometheus/common v0.66.1
)

require (
	github.com/beorn7/perks v1.0.1 // indirect
	github.com/cespare/xxhash/v2 v2.3.0 // indirect
	github.com/google/uuid v1.6.0 // indirect
	github.com/gorilla/websocket v1.5.3 // indirect
	github.com/kr/text v0.2.0 // indirect
	github.com/munnerz/goautoneg v0.0.0-20191010083416-a7dc8b61c822 // indirect
	github.com/prometheus/procfs v0.16.1 // indirect
	go.uber.org/goleak v1.3.0 // indirect
	go.yaml.in/yaml/v2 v2.4.2 // indirect
	golang.org/x/sys v0.49.0 // indirect
	google.golang.org/protobuf v1.36.8 // indirect
)
