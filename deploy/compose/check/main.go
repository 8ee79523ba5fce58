// composecheck loads a Compose file with compose-go, the loader Docker Compose itself uses
// (interpolation, the Compose JSON schema, merge keys, profiles, depends_on and
// network_mode references), and prints the normalised project as JSON for the tests:
//
//	composecheck docker-compose.yml > project.json
//
// Variables come from the process environment only (never a .env file), and every profile
// is enabled, so the test sees each service. Built by cluster/fetch_schemas.sh.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"

	"github.com/compose-spec/compose-go/v2/cli"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: composecheck COMPOSE_FILE")
		os.Exit(2)
	}
	opts, err := cli.NewProjectOptions(
		[]string{os.Args[1]},
		cli.WithOsEnv,
		cli.WithProfiles([]string{"*"}),
	)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	project, err := opts.LoadProject(context.Background())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	out, err := json.MarshalIndent(project, "", " ")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(string(out))
}
