from stl10_similarity.cli import run

run()
