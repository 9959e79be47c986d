"""The two-branch decode loop (`loop`) and the model-adapter interface it is written against (`adapter`).

Imports the algorithm only; backends implement `adapter.ModelAdapter` and pass it in.
"""
