# Thin aliases for ./dev.sh (which is what the README and CI use; it needs only bash and python3).
.PHONY: venv run test lint dry-run clean
venv:
	./dev.sh venv
run:
	./dev.sh run
test:
	./dev.sh test
lint:
	./dev.sh lint
dry-run:
	./dev.sh run -n
clean:
	rm -rf results .snakemake
